"""Who may call what, decided from a request's credential and address before any work is done:
one decision for every protocol (the HTTP middleware in ``server/api/access.py``, the gRPC
services in ``server/grpc_api``).

- The repository API (load, unload, index) needs the admin token, and is closed when none is
  configured.
- With API keys configured, every other call but the public ones needs a key.
- A rate limit and a CPU budget per key, or per client address without keys
  (``server/rate_limit.py``, ``server/cpu_budget.py``). Unknown keys and admin attempts count
  against the address, so guessing is limited too.
"""

from __future__ import annotations

import hmac
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import Enum

from model_contract.errors import ErrorKind, ServiceError
from server.api_keys import ApiKeys, Client
from server.cpu_budget import CpuAccount, CpuBudgets
from server.rate_limit import RateLimiter


class Access(Enum):
    """What a call needs."""

    PUBLIC = "public"
    """Nothing: probes, metrics and documentation, as configured."""
    CLIENT = "client"
    """An API key, when keys are configured; counted against the client's limits."""
    ADMIN = "admin"
    """The admin token."""


@dataclass(frozen=True)
class Admitted:
    identity: str
    """Who the client is: ``key:<name>`` for an API key, else ``address:<ip>``. What it stores
    (jobs, results) is its own."""
    account: CpuAccount | None
    """The CPU budget the call's work is charged to (None: no budget applies)."""
    rate_limit: dict[str, str] = field(default_factory=dict)
    """The IETF RateLimit fields of the client's limit, for the answer."""


class Refused(Exception):
    """A call refused at the door: why, and the rate-limit fields the refusal still carries."""

    def __init__(self, error: ServiceError, rate_limit: dict[str, str]) -> None:
        super().__init__(error.message)
        self.error = error
        self.rate_limit = rate_limit


class Gatekeeper:
    def __init__(
        self,
        *,
        admin_token: str | None,
        api_keys: ApiKeys | None,
        rate_limiter: RateLimiter,
        cpu_budgets: CpuBudgets,
        cpu_limit: float | None,
    ) -> None:
        self._admin_token = admin_token.encode() if admin_token else None
        self._api_keys = api_keys
        self._rate_limiter = rate_limiter
        self._cpu_budgets = cpu_budgets
        self._cpu_limit = cpu_limit

    def admit(self, access: Access, credential: str | None, address: str | None) -> Admitted:
        """Let a call in, or raise ``Refused``. ``credential`` is the bearer token or API key the
        client presented; ``address`` its network address (None when unknown)."""
        by_address = f"address:{address or 'unknown'}"
        if access is Access.PUBLIC:
            return Admitted(by_address, None)
        client = self._api_keys.client_of(credential) if self._api_keys and credential else None
        tier = client if client is not None and access is Access.CLIENT else None
        identity = f"key:{tier.name}" if tier is not None else by_address

        rate_limit: dict[str, str] = {}
        try:
            state = self._rate_limiter.hit(identity, tier.rate_limit if tier else None)
            if state is not None:
                rate_limit = state.headers()
                if not state.allowed:
                    message = f"rate limit of {state.limit} requests per {state.window_s}s reached"
                    raise ServiceError(ErrorKind.RATE_LIMITED, message, retry_after=state.reset_s)
            if access is Access.ADMIN:
                self._check_admin(credential)
            elif self._api_keys is not None and tier is None:
                what = "an unknown API key" if credential else "no API key"
                raise ServiceError(
                    ErrorKind.UNAUTHORIZED, f"{what}: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
                )
            return Admitted(identity, self._cpu_account(identity, tier), rate_limit)
        except ServiceError as error:
            raise Refused(error, rate_limit) from None

    def _cpu_account(self, identity: str, tier: Client | None) -> CpuAccount | None:
        """The budget this call's work is charged to; 429 while the client is in debt."""
        share = tier.cpu_limit if tier and tier.cpu_limit else self._cpu_limit
        if share is None:
            return None
        account = CpuAccount(self._cpu_budgets, identity, share)
        account.check()
        return account

    def _check_admin(self, credential: str | None) -> None:
        if self._admin_token is None:
            raise ServiceError(
                ErrorKind.FORBIDDEN, "the repository API is disabled; set IMGSERVE_ADMIN_TOKEN to enable it"
            )
        if credential is None or not hmac.compare_digest(credential.encode(), self._admin_token):
            raise ServiceError(ErrorKind.UNAUTHORIZED, "the repository API needs 'Authorization: Bearer <admin token>'")


client_identity: ContextVar[str | None] = ContextVar("client_identity", default=None)
"""Set by access control for the request being handled (``Admitted.identity``)."""


def current_client() -> str:
    """The identity of the client whose request is being handled (``address:unknown`` outside one)."""
    return client_identity.get() or "address:unknown"


def bearer_or_key(authorization: str | None, api_key: str | None) -> str | None:
    """The credential of ``Authorization: Bearer <x>`` or ``X-API-Key: <x>`` (HTTP headers
    and gRPC metadata alike)."""
    if authorization is not None:
        scheme, _, credential = authorization.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            return credential.strip()
    if api_key is None:
        return None
    return api_key.strip() or None
