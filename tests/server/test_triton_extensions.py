"""Triton's model configuration and statistics extensions over HTTP, with the fake model: two
served versions of one model keep their own configuration, statistics and metrics, in one
process and behind the model owner's protocol."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes import GatedRuntime
from tests.helpers import MODEL, png, serving, write_fake_model

pytestmark = pytest.mark.usefixtures("split_models")

BOTH_VERSIONS = {"version_policy": {"all": {}}, "batching": {"max_batch_size": 4, "allowed_batch_sizes": [1, 2, 4]}}


async def classify(client: httpx.AsyncClient, version: int, value: int) -> httpx.Response:
    """One PNG as a BYTES tensor in binary form, to one version."""
    image = png(value)
    header = (
        b'{"inputs": [{"name": "images", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": '
        + str(len(image) + 4).encode()
        + b"}}]}"
    )
    return await client.post(
        f"/v2/models/{MODEL}/versions/{version}/infer",
        content=header + len(image).to_bytes(4, "little") + image,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def stats_of(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["version"]: entry for entry in body["model_stats"]}


def test_each_served_version_has_its_own_statistics_and_metrics(tmp_path: Path) -> None:
    write_fake_model(tmp_path, version=2, config=BOTH_VERSIONS)

    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), model_config=BOTH_VERSIONS) as (client, _):
            answers = await asyncio.gather(*(classify(client, 1, i) for i in range(3)))
            answers.append(await classify(client, 2, 5))
            assert [a.status_code for a in answers] == [200] * 4, answers[0].text
            bad = await client.post(f"/v2/models/{MODEL}/versions/2/infer", content=b'{"inputs": [{"name": "x"}]}')
            assert bad.status_code == 400  # refused by the parser: it never reached the version

            everything = (await client.get("/v2/models/stats")).json()
            per_version = stats_of((await client.get(f"/v2/models/{MODEL}/stats")).json())
            assert stats_of(everything) == per_version and set(per_version) == {"1", "2"}
            one, two = per_version["1"], per_version["2"]
            assert (one["inference_stats"]["success"]["count"], two["inference_stats"]["success"]["count"]) == (3, 1)
            assert (one["inference_count"], two["inference_count"]) == (3, 1)
            for entry in (one, two):
                stats = entry["inference_stats"]
                assert stats["fail"]["count"] == 0
                assert stats["queue"]["count"] == stats["compute_infer"]["count"] == entry["inference_count"]
                assert stats["compute_infer"]["ns"] > 0 and entry["last_inference"] > 0
                # Batches are padded to 1, 2 or 4, but counted by the images they really carried.
                assert (
                    sum(b["batch_size"] * b["compute_infer"]["count"] for b in entry["batch_stats"])
                    == (entry["inference_count"])
                )
            only_two = (await client.get(f"/v2/models/{MODEL}/versions/2/stats")).json()["model_stats"]
            assert [s["version"] for s in only_two] == ["2"] and only_two[0]["inference_count"] == 1

            metrics = (await client.get("/metrics")).text
            batched = {
                version: sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith(f'imgserve_batch_size_sum{{model="{MODEL}",version="{version}"}}')
                )
                for version in ("1", "2")
            }
            assert batched == {"1": 3.0, "2": 1.0}

    asyncio.run(scenario())


def test_the_configuration_says_how_each_version_batches(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime(), model_config=BOTH_VERSIONS, limits={"request_timeout_s": 2.5}) as (
            client,
            _,
        ):
            config = (await client.get(f"/v2/models/{MODEL}/config")).json()
            assert config == (await client.get(f"/v2/models/{MODEL}/versions/1/config")).json()
            assert (config["name"], config["backend"], config["max_batch_size"]) == (MODEL, "fake", 4)
            assert config["input"] == [
                {"name": "images", "data_type": "TYPE_UINT8", "format": "FORMAT_NHWC", "dims": [8, 8, 3]}
            ]
            assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
            batching = config["dynamic_batching"]
            assert batching["preferred_batch_size"] == [1, 2, 4]
            assert batching["default_queue_policy"]["default_timeout_microseconds"] == 2_500_000

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/no_such_model/config",
        "/v2/models/no_such_model/stats",
        f"/v2/models/{MODEL}/versions/7/config",
        f"/v2/models/{MODEL}/versions/7/stats",
        f"/v2/models/{MODEL}/versions/07/stats",
    ],
)
def test_unknown_models_and_versions_are_404_in_the_protocols_shape(tmp_path: Path, path: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, _):
            response = await client.get(path)
            assert response.status_code == 404
            assert isinstance(response.json()["error"], str)

    asyncio.run(scenario())
