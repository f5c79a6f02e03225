"""The renderers: every domain error becomes the status, body and headers of the protocol the
client speaks, whoever raised it (a route, a middleware refusal, FastAPI's own validation)."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
from fastapi import FastAPI, Query

from model_contract.errors import MAX_MESSAGE_CHARS, ErrorKind, ServiceError
from server.api.error_handlers import HTTP_STATUS, install_error_handlers, render, speaks_flat_errors

IMGSERVE_PATHS = ["/v1/classify", "/v1/classify/batch", "/v1/models", "/v1/models/m/classify", "/health", "/nowhere"]
FLAT_PATHS = ["/v2", "/v2/models/m/infer", "/v2/repository/index", "/v1/models/m:predict", "/v1/models/m/metadata"]


def body_of(error: ServiceError, path: str) -> object:
    return orjson.loads(render(error, path).body)


def test_every_error_kind_has_a_status() -> None:
    """A kind without one would turn its own error into a 500 at render time."""
    assert set(HTTP_STATUS) == set(ErrorKind)
    client_kinds = {k for k, status in HTTP_STATUS.items() if 400 <= status < 500}
    assert ErrorKind.INVALID_IMAGE in client_kinds and ErrorKind.INTERNAL not in client_kinds


@pytest.mark.parametrize("path", IMGSERVE_PATHS)
def test_imgserve_paths_answer_code_and_message(path: str) -> None:
    assert not speaks_flat_errors(path)
    error = ServiceError(ErrorKind.INVALID_IMAGE, "not a picture")
    response = render(error, path)
    assert response.status_code == 400
    assert body_of(error, path) == {"error": {"code": "invalid_image", "message": "not a picture"}}


@pytest.mark.parametrize("path", FLAT_PATHS)
def test_v2_and_tf_serving_paths_answer_a_flat_message(path: str) -> None:
    assert speaks_flat_errors(path)
    error = ServiceError(ErrorKind.MODEL_NOT_FOUND, "no model named 'm'")
    assert render(error, path).status_code == 404
    assert body_of(error, path) == {"error": "no model named 'm'"}


@pytest.mark.parametrize(("retry_after", "header"), [(0.01, "1"), (1.0, "1"), (2.2, "3"), (None, None)])
def test_retry_after_is_whole_seconds_and_never_zero(retry_after: float | None, header: str | None) -> None:
    response = render(ServiceError(ErrorKind.OVERLOADED, "busy", retry_after=retry_after), "/v1/classify")
    assert response.status_code == 429
    assert response.headers.get("retry-after") == header


def test_unauthorized_names_its_scheme_and_large_bodies_close_the_connection() -> None:
    assert render(ServiceError(ErrorKind.UNAUTHORIZED, "key needed"), "/v2").headers["www-authenticate"] == "Bearer"
    for kind in (ErrorKind.PAYLOAD_TOO_LARGE, ErrorKind.REQUEST_TIMEOUT):
        assert render(ServiceError(kind, "stop"), "/v1/classify").headers["connection"] == "close"
    assert "connection" not in render(ServiceError(ErrorKind.INVALID_IMAGE, "bad"), "/v1/classify").headers


def test_messages_are_capped_whatever_the_caller_passes() -> None:
    error = ServiceError(ErrorKind.BAD_REQUEST, "x" * 100_000)
    assert len(body_of(error, "/v2")["error"]) == MAX_MESSAGE_CHARS  # type: ignore[index]


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v1/echo")
    async def v1_echo(n: int = Query(..., ge=1)) -> dict[str, int]:
        return {"n": n}

    @app.get("/v2/echo")
    async def v2_echo(n: int = Query(..., ge=1)) -> dict[str, int]:
        return {"n": n}

    @app.get("/v2/raises")
    async def raises() -> None:
        raise ServiceError(ErrorKind.NOT_READY, "warming up", retry_after=1)

    @app.get("/v1/crash")
    async def crash() -> None:
        raise RuntimeError("secret path /srv/models/x")

    install_error_handlers(app)
    return app


def test_handlers_render_every_source_of_error_in_the_protocols_shape() -> None:
    asyncio.run(_every_source_of_error())


async def _every_source_of_error() -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        invalid_v1 = await client.get("/v1/echo", params={"n": "0"})
        assert invalid_v1.status_code == 422 and invalid_v1.json()["error"]["code"] == "invalid_parameter"
        invalid_v2 = await client.get("/v2/echo", params={"n": "x"})
        assert invalid_v2.status_code == 422 and isinstance(invalid_v2.json()["error"], str)
        missing = await client.get("/v2/none")
        assert missing.status_code == 404 and isinstance(missing.json()["error"], str)
        not_ready = await client.get("/v2/raises")
        assert not_ready.status_code == 503 and not_ready.headers["retry-after"] == "1"
        assert not_ready.json() == {"error": "warming up"}
        crash = await client.get("/v1/crash")
        assert crash.status_code == 500
        assert crash.json() == {"error": {"code": "internal", "message": "internal server error"}}
