"""deploy/kubernetes, built with kustomize and held against Kubernetes' schema and against the
server itself: its settings, its routes, its ports, its shutdown and its memory. No cluster is
needed (or used): what only a cluster can show is listed in deploy/README.md."""

from __future__ import annotations

import asyncio
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from imgserve.cli import build_parser
from server.api_keys import digest
from server.settings import Settings
from server.supervisor import RELEASE_GRACE_S
from tests.deploy.manifests import (
    CORE_KINDS,
    IMAGE_UID,
    KUBERNETES_VERSION,
    NAMESPACE,
    OVERLAYS,
    ROOT,
    app_get_paths,
    container_port,
    image_model_repository,
    one,
    overlay,
    pod_spec,
    probe_budget_s,
    quantity,
    server_container,
    server_env,
    setting_path,
    settings_from,
)
from tests.fakes import GatedRuntime
from tests.helpers import is_ready, serving, until

# The default model's input, as the image builds it: EfficientNet-Lite0, 224x224 RGB uint8.
DEFAULT_MODEL_IMAGE_BYTES = 224 * 224 * 3
# A reload serves the old and the new version side by side: each worker has a ring for both.
VERSIONS_AT_ONCE = 2
# What a worker gets beyond the drain timeout before the supervisor kills it (server/supervisor.py).
WORKER_GRACE_S = 2


@pytest.fixture(params=OVERLAYS)
def docs(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return overlay(request.param)


def configured(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from(server_env(docs), monkeypatch)


def workers_of(container: dict[str, Any]) -> int:
    """The --workers of the container's command line, parsed by imgserve's own parser."""
    args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.workers is not None, "the worker count must be explicit"
    workers: int = args.workers
    return workers


# Kubernetes' own rules ------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlay_builds_every_kind_into_its_namespace(name: str) -> None:
    docs = overlay(name)
    assert sorted(d["kind"] for d in docs) == sorted([*CORE_KINDS, "ServiceMonitor"])
    assert {d["metadata"].get("namespace") for d in docs} == {NAMESPACE}
    assert not [d for d in docs if d["kind"] == "Secret"], "the Secret is the user's to create, not committed"


def test_core_kinds_are_valid_kubernetes_under_the_strict_schema(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_strict_schema_refuses_a_misspelt_field(docs: list[dict[str, Any]]) -> None:
    deployment = one(docs, "Deployment")
    server_container(pod_spec([deployment]))["readinesProbe"] = {"httpGet": {"path": "/ready", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# The server's settings -------------------------------------------------------------------


def test_the_setting_check_catches_misspelt_names() -> None:
    assert setting_path("IMGSERVE_LIMITS__MAX_BODY_BYTES") == ("limits", "max_body_bytes")
    assert setting_path("IMGSERVE_DRAIN_TIMEOUT_S") == ("drain_timeout_s",)
    for wrong in ["IMGSERVE_LIMITS__MAX_BODY_BYTE", "IMGSERVE_LIMITS_MAX_BODY_BYTES", "IMGSERVE_PORT__X", "PORT"]:
        assert setting_path(wrong) is None, wrong


def test_every_variable_is_a_setting_and_every_value_parses(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = one(docs, "ConfigMap")["data"]
    assert all(key.startswith("IMGSERVE_") for key in configmap), "the ConfigMap holds the server's settings only"
    env = server_env(docs)
    unknown = {key for key in env if key.startswith("IMGSERVE_") and setting_path(key) is None}
    settings = configured(docs, monkeypatch)  # raises on a value the server would refuse at start
    assert settings.host == "0.0.0.0"
    assert settings.drain_timeout_s == float(configmap["IMGSERVE_DRAIN_TIMEOUT_S"])
    assert settings.log_format == "json"  # one object per line, for the cluster's log collector
    assert not unknown, f"not settings of the server (it would ignore them): {sorted(unknown)}"


# Ports, probes and the routes behind them -------------------------------------------------


def test_container_and_service_ports_are_the_configured_ports(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configured(docs, monkeypatch)
    container = server_container(pod_spec(docs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}
    service = one(docs, "Service")
    assert {p["name"]: (p["port"], container_port(container, p["targetPort"])) for p in service["spec"]["ports"]} == {
        "http": (settings.port, settings.port),
        "grpc": (settings.grpc_port, settings.grpc_port),
    }
    assert {p["name"]: p.get("appProtocol") for p in service["spec"]["ports"]}["grpc"] == "grpc"


def test_probes_ask_the_routes_that_say_alive_and_ready(docs: list[dict[str, Any]]) -> None:
    container = server_container(pod_spec(docs))
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths = {kind: probe["httpGet"]["path"] for kind, probe in probes.items()}
    assert paths == {"startupProbe": "/ready", "readinessProbe": "/ready", "livenessProbe": "/health"}
    assert set(paths.values()) <= app_get_paths()
    for probe in probes.values():
        assert container_port(container, probe["httpGet"]["port"]) == container_port(container, "http")
    # Loading and warming a model takes tens of seconds to minutes: several minutes of budget.
    assert probe_budget_s(probes["startupProbe"]) >= 300
    # Once started, a pod that stops being ready leaves the Service within seconds.
    assert probe_budget_s(probes["readinessProbe"]) <= 15


def test_the_gpu_pod_gets_longer_to_warm_up() -> None:
    budgets = {name: probe_budget_s(server_container(pod_spec(overlay(name)))["startupProbe"]) for name in OVERLAYS}
    assert budgets["gpu"] > budgets["cpu"]


def test_probes_answer_as_the_kubelet_needs_with_api_keys_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real app with the ConfigMap's settings and API keys in force, asked as the kubelet
    asks (no key, Host: the pod's IP): alive while warming up, ready only once warm; Prometheus
    scrapes /metrics without a key too."""
    docs = overlay("cpu")
    container = server_container(pod_spec(docs))
    liveness, readiness = container["livenessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["path"]
    configured(docs, monkeypatch)  # the ConfigMap's variables, now in the environment
    keys = tmp_path / "keys.txt"
    keys.write_text(f"client {digest('client-key-0123456789')}\n")
    runtime = GatedRuntime()
    runtime.gate.clear()  # warm-up blocks in the model until the gate opens
    kubelet = {"Host": f"10.1.2.3:{container_port(container, 'http')}", "User-Agent": "kube-probe/1.32"}

    async def scenario() -> None:
        async with serving(tmp_path / "models", runtime, wait_ready=False, api_keys_file=keys) as (client, app):
            try:
                await until(lambda: runtime.entered > 0)
                assert (await client.get(liveness, headers=kubelet)).status_code == 200
                assert (await client.get(readiness, headers=kubelet)).status_code == 503
                assert (await client.get("/metrics", headers=kubelet)).status_code == 200
                assert (await client.get("/v2/models", headers=kubelet)).status_code == 401  # keys are in force
            finally:
                runtime.gate.set()
            await until(lambda: is_ready(app))
            assert (await client.get(readiness, headers=kubelet)).status_code == 200
            assert (await client.get(liveness, headers=kubelet)).status_code == 200

    asyncio.run(scenario())


# Shutdown ---------------------------------------------------------------------------------


def test_the_grace_period_outlasts_the_drain(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL comes after terminationGracePeriodSeconds. Before it, with --workers: the drain
    delay (serving, not ready), the workers' drain (timeout + 2 s), then the model owner's
    (the timeout rounded up, + the time to release the models)."""
    settings = configured(docs, monkeypatch)
    delay, drain = settings.drain_delay_s, settings.drain_timeout_s
    assert delay > 0, "without a delay, clients still routed to a stopping pod get refused connections"
    worst_case = delay + (drain + WORKER_GRACE_S) + (math.ceil(drain) + RELEASE_GRACE_S)
    assert pod_spec(docs)["terminationGracePeriodSeconds"] > worst_case


# Security ---------------------------------------------------------------------------------


def test_pods_run_as_the_images_user_without_privileges(docs: list[dict[str, Any]]) -> None:
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        assert f"--uid {IMAGE_UID} " in (ROOT / dockerfile).read_text()
    spec = pod_spec(docs)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == IMAGE_UID
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    # Service links would set IMGSERVE_PORT=tcp://... for a Service named imgserve.
    assert spec["enableServiceLinks"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_quantity_is_a_kubernetes_quantity(docs: list[dict[str, Any]]) -> None:
    """The schema takes any string for a quantity; the API server would refuse "4 GB"."""
    spec = pod_spec(docs)
    for container in spec["containers"] + spec.get("initContainers", []):
        for amounts in container["resources"].values():
            for amount in amounts.values():
                quantity(amount)
    for volume in spec["volumes"]:
        if "sizeLimit" in volume.get("emptyDir", {}):
            quantity(volume["emptyDir"]["sizeLimit"])
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    for metric in hpa["metrics"]:
        quantity(metric["pods"]["target"]["averageValue"])


def test_the_server_writes_only_to_memory_backed_tmp_and_shm(
    docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = pod_spec(docs)
    container = server_container(spec)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in ("/tmp", "/dev/shm"):
        assert not mounts[path].get("readOnly", False)
        empty_dir = volumes[mounts[path]["name"]]["emptyDir"]
        assert empty_dir["medium"] == "Memory" and quantity(empty_dir["sizeLimit"]) > 0
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly", False)}
    assert writable == {"/tmp", "/dev/shm"}
    assert {"name": "HOME", "value": "/tmp"} in container["env"]
    # The model repository is a volume, mounted read-only where the settings say.
    settings = configured(docs, monkeypatch)
    assert mounts[str(settings.model_repository)]["readOnly"] is True
    # tmpfs pages count against the container's memory: the limit holds them and more.
    in_memory = sum(quantity(volumes[mounts[p]["name"]]["emptyDir"]["sizeLimit"]) for p in ("/tmp", "/dev/shm"))
    assert quantity(container["resources"]["limits"]["memory"]) >= in_memory + 2 * 2**30


def test_shared_memory_holds_every_workers_rings(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's ring holds the model's queue bound plus three batches (server/ipc/remote.py);
    each worker has one per version it serves, two during a reload."""
    spec = pod_spec(docs)
    container = server_container(spec)
    batching = configured(docs, monkeypatch).batching
    ring = (batching.max_queue_size + 3 * batching.max_batch_size) * DEFAULT_MODEL_IMAGE_BYTES
    (shm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert quantity(shm["emptyDir"]["sizeLimit"]) >= workers_of(container) * VERSIONS_AT_ONCE * ring


def test_the_worker_count_is_explicit_and_fits_the_cpus(docs: list[dict[str, Any]]) -> None:
    container = server_container(pod_spec(docs))
    workers = workers_of(container)
    cpus = quantity(container["resources"]["limits"]["cpu"])
    assert workers >= 1 and workers + 1 <= cpus  # the workers and one model owner
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity(requests["cpu"]) <= cpus and quantity(requests["memory"]) <= quantity(limits["memory"])


def test_secrets_come_from_the_users_secret(docs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = pod_spec(docs)
    container = server_container(spec)
    env = {v["name"]: v for v in container["env"]}
    assert env["IMGSERVE_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "imgserve-secrets",
        "key": "admin-token",
    }
    keys_file = configured(docs, monkeypatch).api_keys_file
    assert keys_file is not None
    (mount,) = [m for m in container["volumeMounts"] if keys_file.is_relative_to(m["mountPath"])]
    assert "subPath" not in mount, "a subPath mount never sees the Secret's updates"
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "imgserve-secrets"
    mounted = {item["path"]: item["key"] for item in volume["secret"]["items"]}
    assert mounted[str(keys_file.relative_to(mount["mountPath"]))] == "api-keys"
    assert "IMGSERVE_ADMIN_TOKEN" not in one(docs, "ConfigMap")["data"]


# Images and accelerators -----------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_each_overlay_runs_its_image_and_only_gpu_asks_for_a_gpu(name: str) -> None:
    spec = pod_spec(overlay(name))
    containers = spec["containers"] + spec.get("initContainers", [])
    assert {c["image"] for c in containers} == {f"imgserve:{name}"}
    gpus = [c["resources"].get("limits", {}).get("nvidia.com/gpu") for c in containers]
    tolerated = [t.get("key") for t in spec.get("tolerations", [])]
    if name == "gpu":
        assert quantity(server_container(spec)["resources"]["limits"]["nvidia.com/gpu"]) == 1
        # The usual taint of GPU nodes (the GPU Operator's, GKE's, AKS's), whatever its value.
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec.get("nodeSelector") or spec.get("affinity", {}).get("nodeAffinity")
    else:
        assert gpus == [None] * len(containers) and "nvidia.com/gpu" not in tolerated


def test_the_models_volume_is_filled_from_the_images_repository() -> None:
    spec = pod_spec(overlay("cpu"))
    (seed,) = spec["initContainers"]
    source, target = seed["command"][-2:]
    assert source.rstrip("/.") == image_model_repository()
    assert {m["mountPath"] for m in seed["volumeMounts"]} == {target.rstrip("/")}


# Who selects the pods ----------------------------------------------------------------------


def test_service_budget_and_policy_select_the_pods(docs: list[dict[str, Any]]) -> None:
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = [
        one(docs, "Service")["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
        one(docs, "Deployment")["spec"]["selector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= labels.items()


def test_the_network_policy_opens_the_serving_ports_and_only_dns_out(docs: list[dict[str, Any]]) -> None:
    policy = one(docs, "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    container = server_container(pod_spec(docs))
    opened = {container_port(container, p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert opened == {p["containerPort"] for p in container["ports"]}
    assert [p["port"] for rule in policy["egress"] for p in rule["ports"]] == [53, 53]


def test_the_budget_lets_one_pod_go_while_another_serves(docs: list[dict[str, Any]]) -> None:
    budget = one(docs, "PodDisruptionBudget")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget
    assert hpa["minReplicas"] >= 2
    assert "replicas" not in one(docs, "Deployment")["spec"], "the HPA owns the replica count"
    strategy = one(docs, "Deployment")["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0 and strategy["maxSurge"] >= 1


def test_quantity_reads_kubernetes_units() -> None:
    assert quantity("512Mi") == 512 * 2**20 and quantity("4") == 4 and quantity(1) == 1
    assert quantity("500m") == Decimal("0.5") and quantity("2G") == 2 * 10**9
