"""Who may call what: the admin token, API keys, rate limits, trusted hosts, CORS and docs,
through the real app on a fake runtime. Refusals come before any work and in each protocol's
own error shape."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from imgserve.cli import main
from server.api.access import host_allowed
from server.api_keys import ApiKeys, Client, digest, parse_key_file
from server.cpu_budget import CpuBudgets
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, fake_app, heavy_png, is_ready, png, until, v2_bytes

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")

ADMIN = "s3cret-admin-token"
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
IMAGE = {"Content-Type": "image/png"}


@asynccontextmanager
async def client_for(tmp_path: Path, host: str = "localhost", **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = fake_app(tmp_path, GatedRuntime(), **settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as client:
            await until(lambda: is_ready(app))
            yield client


def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"# clients\nalice {digest(ALICE)}\nbob sha256:{digest(BOB)}\n")
    return path


def classify(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> Any:
    return client.post("/v1/classify", content=png(3), headers={**IMAGE, **(headers or {})})


def test_the_repository_api_is_closed_without_an_admin_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path) as client:
            for path in ("/v2/repository/index", f"/v2/repository/models/{MODEL}/unload",
                         f"/v2/repository/models/{MODEL}/load"):  # fmt: skip
                refused = await client.post(path, headers={"Authorization": "Bearer anything"})
                assert refused.status_code == 403, path
                assert "IMGSERVE_ADMIN_TOKEN" in refused.json()["error"]  # the v2 shape: a string
            assert (await classify(client)).status_code == 200  # the model was not unloaded

    asyncio.run(scenario())


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {ADMIN}", "Bearer", ADMIN])
def test_unload_needs_the_admin_token(tmp_path: Path, authorization: str | None) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, admin_token=ADMIN) as client:
            headers = {"Authorization": authorization} if authorization else {}
            refused = await client.post(f"/v2/repository/models/{MODEL}/unload", headers=headers)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
            assert ADMIN not in refused.text
            assert (await classify(client)).status_code == 200
            admin = {"Authorization": f"Bearer {ADMIN}"}
            assert (await client.post(f"/v2/repository/models/{MODEL}/unload", headers=admin)).status_code == 200
            assert (await classify(client)).status_code == 404

    asyncio.run(scenario())


def test_with_api_keys_inference_needs_a_known_key_and_probes_stay_open(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, api_keys_file=keys_file(tmp_path)) as client:
            missing = await classify(client)
            assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
            unknown = await classify(client, {"X-API-Key": "guess"})
            assert unknown.status_code == 401 and "unknown API key" in unknown.json()["error"]["message"]
            assert (await classify(client, {"Authorization": f"Bearer {ALICE}"})).status_code == 200
            assert (await classify(client, {"X-API-Key": BOB})).status_code == 200
            # Other protocols: the same rule, in their own error shape.
            v2 = await client.get(f"/v2/models/{MODEL}")
            assert v2.status_code == 401 and isinstance(v2.json()["error"], str)
            assert "connection" not in v2.headers  # no body to drain: the connection stays open
            assert (await client.get(f"/v2/models/{MODEL}", headers={"X-API-Key": ALICE})).status_code == 200
            assert (await client.post(f"/v1/models/{MODEL}:predict", json={"instances": []})).status_code == 401
            for open_path in ("/health", "/ready", "/metrics", "/v2/health/live", "/v2/health/ready", "/openapi.json"):
                assert (await client.get(open_path)).status_code == 200, open_path

    asyncio.run(scenario())


def test_probes_and_metrics_can_be_closed_too(tmp_path: Path) -> None:
    async def scenario() -> None:
        keys = keys_file(tmp_path)
        async with client_for(tmp_path, api_keys_file=keys, public_metrics=False, public_probes=False) as client:
            for path in ("/metrics", "/health", "/v2/health/live"):
                assert (await client.get(path)).status_code == 401, path
                assert (await client.get(path, headers={"X-API-Key": ALICE})).status_code == 200, path

    asyncio.run(scenario())


def test_a_missing_keys_file_refuses_every_key(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, api_keys_file=tmp_path / "absent.txt") as client:
            assert (await classify(client, {"X-API-Key": ALICE})).status_code == 401

    asyncio.run(scenario())


def test_keys_are_reloaded_when_the_file_changes_and_a_broken_file_keeps_the_old_keys(tmp_path: Path) -> None:
    now = [0.0]
    path = keys_file(tmp_path)
    keys = ApiKeys(path, clock=lambda: now[0])
    assert keys.client_of(ALICE) == Client("alice") and keys.client_of("carol-key") is None
    path.write_text(f"carol {digest('carol-key')} rate=5/second cpu=0.5\n")  # alice and bob revoked, carol added
    assert keys.client_of("carol-key") is None  # not re-read within the recheck interval
    now[0] += 1.0
    assert keys.client_of("carol-key") == Client("carol", "5/second", 0.5) and keys.client_of(ALICE) is None
    path.write_text("carol not-a-digest\n")
    now[0] += 1.0
    assert keys.client_of("carol-key") == Client("carol", "5/second", 0.5)  # fails closed: the last good keys stay


@pytest.mark.parametrize(
    "line",
    [
        "alice",
        "alice 1234",
        "al ice " + "0" * 64,
        "x" * 65 + " " + "0" * 64,
        "a " + "0" * 64 + " rate=fast",
        "a " + "0" * 64 + " cpu=-1",
        "a " + "0" * 64 + " cpu=nan",
        "a " + "0" * 64 + " burst=3",
    ],
)
def test_a_malformed_keys_line_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_key_file(f"bob {digest(BOB)}\n{line}\n")


def test_hash_key_makes_a_key_and_the_line_that_admits_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "carol"]) == 0
    key, line = capsys.readouterr().out.split("\n")[:2]
    assert key not in line  # only the hash goes into the file
    assert parse_key_file(line) == {digest(key): Client("carol")}


def test_a_rate_limit_per_key_answers_429_with_its_numbers(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, api_keys_file=keys_file(tmp_path), rate_limit="3/minute") as client:
            alice = {"X-API-Key": ALICE}
            remaining = []
            for _ in range(3):
                answer = await classify(client, alice)
                assert answer.status_code == 200
                assert answer.headers["RateLimit-Limit"] == "3" and answer.headers["RateLimit-Policy"] == "3;w=60"
                remaining.append(int(answer.headers["RateLimit-Remaining"]))
            assert remaining == [2, 1, 0]
            limited = await classify(client, alice)
            assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(limited.headers["Retry-After"]) <= 60
            assert limited.headers["RateLimit-Remaining"] == "0"
            # Refused before its body was read: the connection closes rather than drain it.
            assert limited.headers["Connection"] == "close"
            assert (await classify(client, {"X-API-Key": BOB})).status_code == 200  # bob has his own budget
            assert (await client.get("/health")).status_code == 200  # public routes are not counted

    asyncio.run(scenario())


def test_a_key_can_have_its_own_rate_limit(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "keys.txt"
        path.write_text(f"alice {digest(ALICE)} rate=1/minute\nbob {digest(BOB)}\n")  # bob: the server's
        async with client_for(tmp_path, api_keys_file=path, rate_limit="3/minute") as client:
            alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
            assert [(await classify(client, alice)).status_code for _ in range(2)] == [200, 429]
            assert [(await classify(client, bob)).status_code for _ in range(4)] == [200, 200, 200, 429]
        # A tier applies even when the server sets no limit of its own.
        async with client_for(tmp_path / "unlimited", api_keys_file=path) as client:
            assert [(await classify(client, alice)).status_code for _ in range(2)] == [200, 429]
            assert [(await classify(client, bob)).status_code for _ in range(5)] == [200] * 5

    asyncio.run(scenario())


def test_without_keys_the_rate_limit_is_per_client_address(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, rate_limit="2/minute") as client:
            assert [(await classify(client)).status_code for _ in range(3)] == [200, 200, 429]
            # Unknown keys do not buy a new budget: they count against the address.
            assert (await classify(client, {"X-API-Key": "made-up"})).status_code == 429
            # Nor does a guessed admin token.
            assert (await client.post("/v2/repository/index")).status_code == 429

    asyncio.run(scenario())


def test_an_untrusted_host_is_refused_before_anything_else(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, admin_token=ADMIN) as client:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            rebound = await client.post("/v2/repository/index", headers={**admin, "Host": "attacker.example"})
            assert rebound.status_code == 400 and "Host" in rebound.json()["error"]
            assert (await classify(client, {"Host": "attacker.example:8000"})).status_code == 400
            assert (await classify(client, {"Host": "127.0.0.1:8000"})).status_code == 200
            assert (await classify(client, {"Host": "[::1]:8000"})).status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("host", "patterns", "allowed"),
    [
        (b"api.example.com", ["api.example.com"], True),
        (b"API.Example.com:443", ["api.example.com"], True),
        (b"a.b.example.org", ["*.example.org"], True),
        (b"example.org", ["*.example.org"], False),
        (b"evil-example.org", ["*.example.org"], False),
        (b"[::1]:8000", ["[::1]"], True),
        (b"[::1", ["[::1]"], False),
        (None, ["localhost"], False),
        (None, ["*"], True),
        (b"anything", ["*"], True),
    ],
)
def test_host_patterns(host: bytes | None, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(host, patterns) is allowed


def test_cors_is_off_by_default_and_answers_preflights_when_configured(tmp_path: Path) -> None:
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}

    async def scenario() -> None:
        async with client_for(tmp_path / "off") as client:
            answer = await client.options("/v1/classify", headers=preflight)
            assert "access-control-allow-origin" not in answer.headers
        origins = "https://app.example.com"
        async with client_for(tmp_path / "on", cors_origins=origins, api_keys_file=keys_file(tmp_path)) as client:
            answer = await client.options("/v1/classify", headers=preflight)  # no key on a preflight
            assert answer.status_code == 200
            assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
            other = await client.options("/v1/classify", headers={**preflight, "Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers

    asyncio.run(scenario())


def test_docs_can_be_turned_off(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with client_for(tmp_path, docs=False) as client:
            for path in ("/docs", "/redoc", "/openapi.json"):
                assert (await client.get(path)).status_code == 404, path

    asyncio.run(scenario())


def test_a_cpu_budget_is_paid_after_the_fact_and_refills_at_its_share() -> None:
    now = [0.0]
    budgets = CpuBudgets(burst_s=1.0, clock=lambda: now[0])
    assert budgets.retry_after("a", share=0.25) is None
    budgets.charge("a", share=0.25, seconds=0.6)  # one expensive request: 0.35 s into debt
    assert budgets.retry_after("a", share=0.25) == pytest.approx(1.4)
    assert budgets.retry_after("b", share=0.25) is None  # others are not affected
    now[0] += 1.0
    assert budgets.retry_after("a", share=0.25) == pytest.approx(0.4)
    now[0] += 0.5
    assert budgets.retry_after("a", share=0.25) is None
    now[0] += 10.0
    budgets.retry_after("a", share=0.25)
    assert len(budgets) == 0  # paid up: nothing held for this client any more


def test_a_client_that_spends_its_cpu_budget_waits_while_others_are_served(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "keys.txt"
        path.write_text(f"alice {digest(ALICE)} cpu=0.001\nbob {digest(BOB)}\n")  # bob: no limit
        async with client_for(tmp_path, api_keys_file=path) as client:
            heavy = {**IMAGE, "X-API-Key": ALICE}
            first = await client.post("/v1/classify", content=heavy_png(0), headers=heavy)
            assert first.status_code == 200  # paid after the fact: the first one always runs
            refused = await client.post("/v1/classify", content=png(1), headers=heavy)
            assert refused.status_code == 429 and "CPU budget" in refused.json()["error"]["message"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert (await classify(client, {"X-API-Key": BOB})).status_code == 200

    asyncio.run(scenario())


def test_work_admitted_together_does_not_all_start_on_credit_the_first_piece_spends(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "keys.txt"
        path.write_text(f"alice {digest(ALICE)} cpu=0.001\n")
        async with client_for(tmp_path, api_keys_file=path, decode_threads=1) as client:
            body, headers = v2_bytes([heavy_png(i) for i in range(4)])
            answer = await client.post(
                f"/v2/models/{MODEL}/infer", content=body, headers={**headers, "X-API-Key": ALICE}
            )
            # The first decode ran on credit; the next could not start once it was spent.
            assert answer.status_code == 429 and "CPU budget" in answer.json()["error"]

    asyncio.run(scenario())
