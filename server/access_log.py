"""One access line per request or call, on the ``imgserve.access`` logger, written once it is
answered: what was asked, how it ended, how long it took, and the request's id (HTTP requests
here; gRPC calls in ``server/grpc_api/guard.py``). On with ``IMGSERVE_ACCESS_LOG=true``
(``imgserve serve --access-log``): a line per request costs throughput."""

from __future__ import annotations

import logging

from model_contract.errors import echo

access = logging.getLogger("imgserve.access")


def log_http(method: str, path: str, status: int, seconds: float, client: str | None) -> None:
    # The path is the client's: quoted and cut, so it cannot forge lines or grow them.
    access.info(
        "%s %s %d %.1f ms",
        method,
        echo(path),
        status,
        seconds * 1000,
        extra={"protocol": "http", "method": method, "path": path[:200], "status": status,
               "duration_ms": round(seconds * 1000, 3), "client": client},
    )  # fmt: skip


def log_grpc(method: str, code: str, seconds: float, client: str | None) -> None:
    access.info(
        "gRPC %s %s %.1f ms",
        method,
        code,
        seconds * 1000,
        extra={"protocol": "grpc", "method": method, "status": code, "duration_ms": round(seconds * 1000, 3),
               "client": client},
    )  # fmt: skip
