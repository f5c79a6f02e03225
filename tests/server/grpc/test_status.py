"""The one table from error kinds to gRPC status codes, and the retry hint."""

from __future__ import annotations

import grpc
import pytest

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import HTTP_STATUS
from server.grpc_api.status import GRPC_STATUS, retry_hint


def test_every_error_kind_has_a_status_code() -> None:
    assert set(GRPC_STATUS) == set(ErrorKind)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_client_mistakes_and_server_states_keep_their_meaning(kind: ErrorKind) -> None:
    """What HTTP says is the client's fault (4xx but 408/429/499) is never a retryable code over
    gRPC, and what HTTP says is the server's state (429, 503) always is."""
    http, code = HTTP_STATUS[kind], GRPC_STATUS[kind]
    if http in (429, 503):
        assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
    elif 400 <= http < 500 and http not in (408, 499):
        assert code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)


def test_the_retry_hint_is_whole_seconds_and_only_when_a_retry_can_help() -> None:
    overloaded = ServiceError(ErrorKind.OVERLOADED, "full", retry_after=0.2)
    assert retry_hint(overloaded) == (("retry-after", "1"), ("grpc-retry-pushback-ms", "1000"))
    assert dict(retry_hint(ServiceError(ErrorKind.RATE_LIMITED, "slow down", retry_after=2.5)))["retry-after"] == "3"
    assert retry_hint(ServiceError(ErrorKind.BAD_REQUEST, "no")) == ()
