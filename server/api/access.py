"""Who may call what, decided from the headers before any work is done.

- ``TrustedHosts``: the Host header must name this server (DNS rebinding: a web page must not
  reach a server on 127.0.0.1 through a hostname the attacker controls).
- ``AccessControl``: the repository API (load, unload, index) needs the admin token and is
  closed when none is configured; with API keys configured, every other route but the
  public ones needs a key; a rate limit and a CPU budget per key, or per client address
  without keys (server/rate_limit.py, server/cpu_budget.py).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_contract.errors import ErrorKind, ServiceError
from server.api.error_handlers import refuse
from server.api_keys import ApiKeys, Client
from server.cpu_budget import CpuAccount, CpuBudgets, current_account
from server.rate_limit import RateLimiter

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
    authorization = _header(scope, b"authorization")
    if authorization is not None:
        scheme, _, credential = authorization.decode("latin-1").partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    key = _header(scope, b"x-api-key")
    if key is None:
        return None
    return key.decode("latin-1").strip() or None


class AccessControl:
    def __init__(
        self,
        app: ASGIApp,
        *,
        admin_token: str | None,
        api_keys: ApiKeys | None,
        rate_limiter: RateLimiter,
        cpu_budgets: CpuBudgets,
        cpu_limit: float | None,
        public_paths: frozenset[str],
    ) -> None:
        self.app = app
        self.admin_token = admin_token.encode() if admin_token else None
        self.api_keys = api_keys
        self.rate_limiter = rate_limiter
        self.cpu_budgets = cpu_budgets
        self.cpu_limit = cpu_limit
        self.public_paths = public_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        credential = presented_credential(scope)
        peer = scope.get("client")
        address = f"address:{peer[0] if peer else 'unknown'}"
        client = self.api_keys.client_of(credential) if self.api_keys and credential else None
        # Unknown keys and admin attempts count against the address: guessing is limited too.
        identity = f"key:{client.name}" if client and not path.startswith(ADMIN_PREFIX) else address
        tier = client if identity != address else None

        headers: dict[str, str] = {}
        try:
            state = self.rate_limiter.hit(identity, tier.rate_limit if tier else None)
            if state is not None:
                headers = state.headers()
                if not state.allowed:
                    message = f"rate limit of {state.limit} requests per {state.window_s}s reached"
                    raise ServiceError(ErrorKind.RATE_LIMITED, message, retry_after=state.reset_s)
            if path.startswith(ADMIN_PREFIX):
                self._check_admin(credential)
            elif self.api_keys is not None and tier is None:
                what = "an unknown API key" if credential else "no API key"
                raise ServiceError(
                    ErrorKind.UNAUTHORIZED, f"{what}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                )
            account = self._cpu_account(identity, tier)
        except ServiceError as error:
            await refuse(error, scope, receive, send, headers)
            return

        token = current_account.set(account)
        try:
            await self.app(scope, receive, _with_headers(send, headers) if headers else send)
        finally:
            current_account.reset(token)

    def _cpu_account(self, identity: str, tier: Client | None) -> CpuAccount | None:
        """The budget this request's work is charged to; 429 while the client is in debt."""
        share = tier.cpu_limit if tier and tier.cpu_limit else self.cpu_limit
        if share is None:
            return None
        account = CpuAccount(self.cpu_budgets, identity, share)
        account.check()
        return account

    def _check_admin(self, credential: str | None) -> None:
        if self.admin_token is None:
            raise ServiceError(
                ErrorKind.FORBIDDEN, "the repository API is disabled; set IMGSERVE_ADMIN_TOKEN to enable it"
            )
        if credential is None or not hmac.compare_digest(credential.encode(), self.admin_token):
            raise ServiceError(ErrorKind.UNAUTHORIZED, "the repository API needs 'Authorization: Bearer <admin token>'")


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    encoded = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *encoded]}
        await send(message)

    return send_with_headers
