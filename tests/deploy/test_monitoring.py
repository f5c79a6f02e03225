"""What watches and scales imgserve: the HorizontalPodAutoscaler, the prometheus-adapter rule
that feeds it, the ServiceMonitor, and the Grafana dashboard. Every metric they name must be
one the server exports, with the labels it really has."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import Counter, Gauge, Histogram

from server.metrics import Metrics
from tests.deploy.manifests import (
    DEPLOY,
    KUBERNETES,
    OVERLAYS,
    TARGET_LABELS,
    app_get_paths,
    container_port,
    exported_series,
    family_of,
    load_yaml,
    one,
    overlay,
    pod_spec,
    quantity,
    series_in,
    server_container,
    server_env,
    settings_from,
)

DASHBOARD = DEPLOY / "grafana" / "imgserve-dashboard.json"
ADAPTER_RULES = KUBERNETES / "prometheus-adapter-rules.yaml"

# The labels of each metric family the dashboard and the autoscaler use. Not taken on trust:
# test_the_label_table_is_the_servers checks each line against the server's instruments.
LABELS: dict[str, set[str]] = {
    "imgserve_requests": {"route", "method", "status"},
    "imgserve_request_duration_seconds": {"route"},
    "imgserve_grpc_requests": {"method", "code"},
    "imgserve_grpc_request_duration_seconds": {"method"},
    "imgserve_batch_size": {"model", "version"},
    "imgserve_queue_depth": {"model", "version"},
    "imgserve_queue_wait_seconds": {"model", "version"},
    "imgserve_batch_run_seconds": {"model", "version"},
    "imgserve_dropped_images": {"model", "version", "reason"},
    "imgserve_requests_in_progress": set(),
}
# What the dashboard must show (issue "Operations", item 3).
REQUIRED = {
    "imgserve_requests_total",
    "imgserve_grpc_requests_total",
    "imgserve_request_duration_seconds_bucket",
    "imgserve_grpc_request_duration_seconds_bucket",
    "imgserve_batch_size_sum",
    "imgserve_queue_depth",
    "imgserve_requests_in_progress",
}

SELECTOR = re.compile(r"(imgserve_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*\"([^\"]*)\"")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def instruments() -> dict[str, Any]:
    """The server's instruments by family name, through their public ``describe()``."""
    metrics = Metrics()
    found: dict[str, Any] = {}
    for value in vars(metrics).values():
        if isinstance(value, (Counter, Gauge, Histogram)):
            found[next(iter(value.describe())).name] = value
    return found


def hpa_metric(name: str) -> tuple[str, dict[str, Any]]:
    hpa = one(overlay(name), "HorizontalPodAutoscaler")["spec"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    return metric["pods"]["metric"]["name"], metric["pods"]["target"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def selectors(query: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """``(series, {label: (operator, value)})`` for each ``series{...}`` in a PromQL query."""
    return [
        (series, {label: (op, value) for label, op, value in MATCHER.findall(body)})
        for series, body in SELECTOR.findall(query)
    ]


# The autoscaler ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_hpa_scales_the_deployment_on_requests_in_progress(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = overlay(name)
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    deployment = one(docs, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
    metric, target = hpa_metric(name)
    assert metric == "imgserve_requests_in_progress"
    assert target["type"] == "AverageValue"
    # Scale out long before the pod's admission bound answers 429.
    limit = settings_from(server_env(docs), monkeypatch).limits.max_requests_in_progress
    assert 0 < quantity(target["averageValue"]) <= limit / 4
    behavior = hpa["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] < behavior["scaleDown"]["stabilizationWindowSeconds"]
    assert behavior["scaleUp"]["policies"] and behavior["scaleDown"]["policies"]
    assert metric in exported_series()


def test_the_gpu_target_is_its_own() -> None:
    assert quantity(hpa_metric("gpu")[1]["averageValue"]) != quantity(hpa_metric("cpu")[1]["averageValue"])


def test_the_adapter_rule_serves_the_hpas_metric_per_pod() -> None:
    values = load_yaml(ADAPTER_RULES)
    (rule,) = values["rules"]["custom"]
    assert values["rules"]["default"] is False  # the default rules would expose the same name again
    names = {hpa_metric(name)[0] for name in OVERLAYS}
    assert series_in(rule["seriesQuery"]) == names
    (metric,) = names
    assert re.search(rule["name"]["matches"], metric) and rule["name"]["as"] == metric
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"]
    labels = {label for _, matchers in selectors(rule["seriesQuery"]) for label in matchers}
    assert labels == {"namespace", "pod"} <= TARGET_LABELS
    assert names <= exported_series()


def test_the_servicemonitor_scrapes_metrics_on_the_http_port() -> None:
    for name in OVERLAYS:
        docs = overlay(name)
        monitor = one(docs, "ServiceMonitor")
        service = one(docs, "Service")
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["spec"]["endpoints"]
        (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
        container = server_container(pod_spec(docs))
        assert container_port(container, port["targetPort"]) == container_port(container, "http")
        assert endpoint["path"] == "/metrics" and endpoint["path"] in app_get_paths()


# Metrics and their labels ------------------------------------------------------------------


def test_the_label_table_is_the_servers() -> None:
    found = instruments()
    assert LABELS.keys() <= found.keys(), f"not instruments of the server: {sorted(LABELS.keys() - found.keys())}"
    for family, labels in LABELS.items():
        if labels:
            found[family].labels(**dict.fromkeys(labels, "x"))  # ValueError unless exactly its labels
        else:
            assert Metrics().registry.get_sample_value(family) is not None, f"{family} has labels"


def test_every_series_the_dashboard_queries_is_exported_with_those_labels() -> None:
    board = dashboard()
    used: set[str] = set()
    for query in queries(board):
        assert query.count("(") == query.count(")") and query.count("{") == query.count("}"), query
        series = series_in(query)
        used |= series
        for name, matchers in selectors(query):
            family = family_of(name)
            assert family in LABELS, f"add {family}'s labels to LABELS"
            assert set(matchers) <= LABELS[family] | TARGET_LABELS, query
        allowed = set().union(*(LABELS[family_of(s)] for s in series)) | TARGET_LABELS if series else TARGET_LABELS
        for grouping in GROUPING.findall(query):
            assert {label.strip() for label in grouping.split(",")} <= allowed, query
    assert used >= REQUIRED
    assert used <= exported_series(), f"not exported by the server: {sorted(used - exported_series())}"


def test_the_dashboard_leaves_out_only_real_probe_routes() -> None:
    paths = app_get_paths()
    excluded = set()
    for query in queries(dashboard()):
        for _, matchers in selectors(query):
            if matchers.get("route", ("", ""))[0] == "!~":
                excluded |= set(matchers["route"][1].split("|"))
    assert excluded and excluded <= paths
    assert {"/health", "/ready", "/metrics"} <= excluded


# The dashboard as Grafana reads it ---------------------------------------------------------


def test_the_dashboard_asks_its_datasource_variable_and_filters_by_model() -> None:
    board = dashboard()
    found = variables(board)
    assert found["datasource"]["type"] == "datasource" and found["datasource"]["query"] == "prometheus"
    for variable in found.values():
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == "${datasource}", variable["name"]
    assert "label_values(" in found["model"]["query"] and found["model"]["query"].rstrip(") ").endswith("model")
    (model_series,) = series_in(found["model"]["query"])
    assert "model" in LABELS[family_of(model_series)]
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            for name, matchers in selectors(target["expr"]):
                assert matchers["namespace"] == ("=~", "$namespace"), target["expr"]
                if "model" in LABELS[family_of(name)]:
                    assert matchers.get("model") == ("=~", "$model"), target["expr"]


def test_the_dashboard_shows_p50_p99_errors_and_the_hpas_target() -> None:
    board = dashboard()
    all_queries = " ".join(queries(board))
    for histogram in ("imgserve_request_duration_seconds_bucket", "imgserve_grpc_request_duration_seconds_bucket"):
        quantiles = {
            match.group(1)
            for query in queries(board)
            if histogram in query
            for match in [re.match(r"histogram_quantile\(([0-9.]+),", query)]
            if match
        }
        assert quantiles >= {"0.5", "0.99"}, histogram
    assert "sum by (status)" in all_queries and "sum by (code)" in all_queries
    targets = {option["value"] for option in variables(board)["hpa_target"]["options"]}
    assert targets == {str(quantity(hpa_metric(name)[1]["averageValue"])) for name in OVERLAYS}
    assert "vector($hpa_target)" in all_queries
