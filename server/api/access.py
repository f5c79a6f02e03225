"""Who may call what over HTTP, decided from the headers before any work is done.

- ``TrustedHosts``: the Host header must name this server (DNS rebinding: a web page must not
  reach a server on 127.0.0.1 through a hostname the attacker controls).
- ``AccessControl``: the path says what a request needs (public, a client's key, the admin
  token); ``server.gatekeeper`` decides, as it does for gRPC.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import refuse
from server.cpu_budget import current_account
from server.gatekeeper import Access, Gatekeeper, Refused, bearer_or_key, client_identity

ADMIN_PREFIX = "/v2/repository"
PROBE_PATHS = frozenset({"/health", "/ready", "/v2/health/live", "/v2/health/ready"})
METRICS_PATHS = frozenset({"/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _host_name(host: str) -> str:
    """The Host header without its port; an IPv6 literal keeps its brackets."""
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    return host.split(":", 1)[0]


def host_allowed(host: bytes | None, patterns: Iterable[str]) -> bool:
    """Exact names and ``*.domain`` patterns; ``*`` allows any host."""
    patterns = [p.lower() for p in patterns]
    if "*" in patterns:
        return True
    if not host:
        return False
    name = _host_name(host.decode("latin-1").lower())
    return any(name == p or (p.startswith("*.") and name.endswith(p[1:])) for p in patterns)


class TrustedHosts:
    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app = app
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not host_allowed(_header(scope, b"host"), self.hosts):
            error = ServiceError(ErrorKind.INVALID_HOST, "the Host header does not name this server")
            await refuse(error, scope, receive, send)
            return
        await self.app(scope, receive, send)


def presented_credential(scope: Scope) -> str | None:
    """``Authorization: Bearer <x>`` or ``X-API-Key: <x>``."""
    authorization, key = _header(scope, b"authorization"), _header(scope, b"x-api-key")
    return bearer_or_key(
        None if authorization is None else authorization.decode("latin-1"),
        None if key is None else key.decode("latin-1"),
    )


def access_of(path: str, public_paths: frozenset[str]) -> Access:
    if path in public_paths:
        return Access.PUBLIC
    return Access.ADMIN if path.startswith(ADMIN_PREFIX) else Access.CLIENT


class AccessControl:
    def __init__(self, app: ASGIApp, *, gatekeeper: Gatekeeper, public_paths: frozenset[str]) -> None:
        self.app = app
        self.gatekeeper = gatekeeper
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        access = access_of(scope["path"], self.public_paths) if scope["type"] == "http" else Access.PUBLIC
        if access is Access.PUBLIC:
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        try:
            admitted = self.gatekeeper.admit(access, presented_credential(scope), peer[0] if peer else None)
        except Refused as refused:
            await refuse(refused.error, scope, receive, send, refused.rate_limit)
            return
        token, who = current_account.set(admitted.account), client_identity.set(admitted.identity)
        try:
            headers = admitted.rate_limit
            await self.app(scope, receive, _with_headers(send, headers) if headers else send)
        finally:
            client_identity.reset(who)
            current_account.reset(token)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    encoded = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *encoded]}
        await send(message)

    return send_with_headers
