"""schemathesis over /openapi.json, against the real app on real HTTP: every operation, with
bodies, parameters and headers generated from (and against) the schema, answers without a
server error. The budget per operation is the hypothesis profile's (see tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import settings
from schemathesis.checks import not_a_server_error

from server.app import create_app
from server.settings import Settings
from tests.fakes import GatedRuntime
from tests.helpers import fake_app
from tests.live_server import live_server

# Each test runs with the models in the app and behind the model owner's protocol.
pytestmark = pytest.mark.usefixtures("split_models")

ADMIN = "openapi-fuzz-admin"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository: Path = tmp_path_factory.mktemp("openapi-fuzz")
    # A repository model is only reloadable and unloadable by the admin: give the fuzzer the
    # token, so it reaches those handlers too, and a fresh model per module.
    app = fake_app(repository, GatedRuntime(), admin_token=ADMIN)
    with live_server(app) as url:
        yield url


# The document is the app's own; it does not depend on the models, so it is read at import
# (schemathesis's lazy fixture loader does not support this pytest).
schema = schemathesis.openapi.from_dict(create_app(Settings(model_repository=Path("unused"))).openapi())


def not_a_server_error_but_the_clients_own_deadline(ctx: Any, response: Any, case: Any) -> bool | None:
    """504 answers a deadline the client set itself (X-Request-Timeout-Ms: 5e-324 can never be
    met): that is the protocol's answer, not a fault. Any other 5xx fails the test."""
    if response.status_code == 504 and "X-Request-Timeout-Ms" in (case.headers or {}):
        return None
    return not_a_server_error(ctx, response, case)  # type: ignore[no-any-return]


@schema.parametrize()
@settings(max_examples=max(20, settings.default.max_examples // 5))  # per operation: 30 in `make test`
def test_no_operation_answers_a_server_error(case: Any, base_url: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN}"} if case.path.startswith("/v2/repository") else None
    checks = [not_a_server_error_but_the_clients_own_deadline]
    case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=30)
