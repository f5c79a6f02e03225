"""Path parameters are client input too: a version in the URL that is not ASCII digits, or too
long to be a number, is a 404 in the protocol's shape, on every route that takes one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.fakes import GatedRuntime
from tests.helpers import MODEL, serving

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")

VERSIONS = ["%C2%B2", "9" * 5000, "1.0", "-1", "0x1", "01"]


@pytest.mark.parametrize(
    "version", VERSIONS, ids=["superscript-two", "5000-digits", "float", "negative", "hex", "zero-padded"]
)
def test_a_version_that_is_not_a_version_number_is_404_everywhere(tmp_path: Path, version: str) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, GatedRuntime()) as (client, _):
            answers = [
                await client.get(f"/v2/models/{MODEL}/versions/{version}"),
                await client.post(f"/v2/models/{MODEL}/versions/{version}/infer", json={"inputs": []}),
                await client.get(f"/v1/models/{MODEL}/versions/{version}"),
                await client.get(f"/v1/models/{MODEL}/versions/{version}/metadata"),
                await client.post(f"/v1/models/{MODEL}/versions/{version}:predict", json={"instances": []}),
            ]
            for answer in answers:
                assert answer.status_code == 404, (answer.request.url.path[:80], answer.text[:200])
                assert isinstance(answer.json()["error"], str) and len(answer.content) < 400
            ready = await client.get(f"/v2/models/{MODEL}/versions/{version}/ready")
            assert ready.status_code == 400 and ready.json()["ready"] is False
            assert (await client.get(f"/v2/models/{MODEL}/versions/1")).status_code == 200

    asyncio.run(scenario())
