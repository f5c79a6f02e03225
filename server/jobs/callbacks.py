"""Job callbacks: which URLs a client may name, and one signed attempt to deliver a job to one.

Each stage refuses on its own:

- ``CallbackPolicy.check``, at submission: the URL's form, and its host against
  ``IMGSERVE_CALLBACK_ALLOWED_HOSTS``. No network at all, not even DNS.
- ``CallbackPolicy.deliver``, at each attempt: the URL is checked again (the settings may have
  changed since the job was stored), its host resolved, and every address screened (a name that
  resolves to one refused address is refused whole). The request then goes to the screened
  address itself, not to the name again, which could answer differently the second time (DNS
  rebinding): the address is in the URL, the name in ``Host`` and, for https, in the TLS server
  name that the certificate is checked against.
- The receiver checks the signature as ``verify`` does.

What "allowed" means. A name entry (``hooks.example.com``, or ``*.example.com`` for the names
under it) admits URLs that name that host, and the public addresses it resolves to. An IP or
network entry (``127.0.0.1``, ``10.0.0.0/8``, ``::1``) admits URLs that name an address in it,
and admits that address at delivery whichever name resolved to it. So a receiver on a private
network, called by name, needs both: ``hooks.internal,10.1.2.0/24``.

Without ``IMGSERVE_CALLBACK_SECRET`` every callback is refused at submission: an unsigned
callback would let anyone who can reach the receiver forge a job's results.

The runner keeps the schedule; ``retry_delay`` only computes the wait before the next attempt.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from model_contract.errors import ErrorKind, ServiceError, echo
from server.settings import Settings

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host name, port) -> the addresses it resolves to, as text."""

MAX_URL_CHARS = 2048
TIMESTAMP_HEADER = "X-Imgserve-Timestamp"
SIGNATURE_HEADER = "X-Imgserve-Signature"
SIGNATURE_PREFIX = "sha256="
USER_AGENT = "imgserve"
# A name with many addresses is tried on its first few; each try costs up to the connect timeout.
MAX_ADDRESSES_TRIED = 3
# Errors are stored with the job and shown to its owner: short, and never the receiver's words
# (an allowed internal host's answers must not be readable through callback errors).
MAX_ERROR_CHARS = 200

# A DNS label, as resolvers accept them (underscores too: container names have them).
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Imgserve-Signature`` value: HMAC-SHA256 of ``"<timestamp>."`` and the body."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secret: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    body: bytes,
    now: float,
    tolerance_s: float = 300.0,
) -> bool:
    """A receiver's check: the signature is ours and its timestamp within ``tolerance_s`` of
    ``now`` (unix seconds), so a recorded delivery cannot be replayed later."""
    if not timestamp_header or not signature_header:
        return False
    if len(timestamp_header) > 20 or not (timestamp_header.isascii() and timestamp_header.isdigit()):
        return False
    timestamp = int(timestamp_header)
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).encode()
    return hmac.compare_digest(expected, signature_header.encode("utf-8", "replace"))


def is_public(address: IPAddress) -> bool:
    """Whether an address is globally routable, not one of the host's or its network's own."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        # 6to4 carries an IPv4 address inside; site-local is private but `is_global` says otherwise.
        if address.sixtofour is not None and not is_public(address.sixtofour):
            return False
        if address.is_site_local:
            return False
    # `is_global` alone lets IPv4 multicast through.
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _valid_name(name: str) -> bool:
    labels = name.split(".")
    # A last label of digits is an address in another spelling (2130706433, 127.1), not a name.
    return len(name) <= 253 and all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """``IMGSERVE_CALLBACK_ALLOWED_HOSTS``: exact names, ``*.`` suffixes, addresses and networks."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    """``.example.com`` for ``*.example.com``."""
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Sequence[str]) -> AllowList:
        """Raises ValueError on an entry that is neither a name nor an address: a typo in the
        settings should stop the server, not silently refuse every callback."""
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            if not entry.isascii():
                raise ValueError(f"callback_allowed_hosts: write {raw!r} in its xn-- (punycode) form")
            bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
            try:
                networks.append(ipaddress.ip_network(bare))
                continue
            except ValueError as exc:
                if "/" in bare or ":" in bare or bare.replace(".", "").isdigit():
                    raise ValueError(f"callback_allowed_hosts: {raw!r} is not an address or network: {exc}") from None
            wildcard = entry.startswith("*.")
            name = (entry[2:] if wildcard else entry).removesuffix(".")
            if not name or not _valid_name(name):
                raise ValueError(f"callback_allowed_hosts: {raw!r} is not a host name, address or network")
            if wildcard:
                suffixes.append("." + name)
            else:
                names.add(name)
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def admits_name(self, name: str) -> bool:
        return name in self.names or any(name.endswith(suffix) for suffix in self.suffixes)

    def admits_address(self, address: IPAddress) -> bool:
        forms = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            forms.append(address.ipv4_mapped)
        return any(form.version == net.version and form in net for form in forms for net in self.networks)


def _refused(message: str) -> ServiceError:
    return ServiceError(ErrorKind.INVALID_PARAMETER, message)


def _authority(url: str) -> str:
    """The raw text between ``//`` and the path: where user info would hide from a parser."""
    start = url.find("//")
    if start < 0:
        return ""
    rest = url[start + 2 :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return rest[:end]


@dataclass(frozen=True)
class Attempt:
    ok: bool
    status: int | None
    """The receiver's HTTP status, when it answered."""
    error: str | None
    """Why the attempt failed, short (stored with the job)."""


def _failed(error: str, status: int | None = None) -> Attempt:
    error = error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 3] + "..."
    return Attempt(ok=False, status=status, error=error)


async def resolve_host(name: str, port: int) -> list[str]:
    """The system resolver, off the event loop (``getaddrinfo`` runs in the default executor)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


@functools.cache
def system_tls() -> ssl.SSLContext:
    """httpx's default trust (the system's CAs), made once per process: making it costs ~40 ms."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class CallbackPolicy:
    """What the settings allow, the decisions that need no network (``check``, ``screen``,
    ``retry_delay``), and ``deliver``. ``resolve``, ``clock`` and ``tls`` (None: the system's
    CAs) are there for tests and for receivers behind a private CA (``dataclasses.replace``)."""

    allowed: AllowList
    secret: bytes | None = field(repr=False)  # kept out of logs
    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    retry_base_s: float
    retry_max_s: float
    resolve: Resolver = resolve_host
    clock: Callable[[], float] = time.time
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> CallbackPolicy:
        secret = settings.callback_secret.get_secret_value().encode() if settings.callback_secret else b""
        jobs = settings.jobs
        return cls(
            allowed=AllowList.parse(settings.callback_allowed_hosts),
            secret=secret or None,
            connect_timeout_s=jobs.callback_connect_timeout_s,
            read_timeout_s=jobs.callback_read_timeout_s,
            max_attempts=jobs.callback_max_attempts,
            retry_base_s=jobs.callback_retry_base_s,
            retry_max_s=jobs.callback_retry_max_s,
        )

    def check(self, url: str) -> str:
        """The URL, normalized (IDNA host, no fragment), or a 422 ``ServiceError`` saying why not."""
        if not self.allowed:
            raise _refused("callbacks are off on this server: IMGSERVE_CALLBACK_ALLOWED_HOSTS names no host")
        if self.secret is None:
            raise _refused("callbacks are off on this server: set IMGSERVE_CALLBACK_SECRET to sign them")
        if len(url) > MAX_URL_CHARS:
            raise _refused(f"callback_url is longer than {MAX_URL_CHARS} characters")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError):
            raise _refused(f"callback_url {echo(url)} is not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise _refused(f"callback_url {echo(url)} must be an http or https URL")
        authority = _authority(url)
        if parsed.userinfo or "@" in authority or "\\" in authority:
            raise _refused(f"callback_url {echo(url)} must not carry user info (user:password@)")
        host = parsed.raw_host.decode("ascii", "replace")
        if not host:
            raise _refused(f"callback_url {echo(url)} names no host")
        if parsed.port is not None and not 0 < parsed.port < 65536:
            raise _refused(f"callback_url {echo(url)} has no valid port")
        address = _ip(host)
        if address is not None:
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
                raise _refused(f"callback_url {echo(url)}: scoped IPv6 addresses are not supported")
            if not self.allowed.admits_address(address):
                raise _refused(f"callback_url's host {echo(host)} is not among this server's allowed callback hosts")
        else:
            name = host.removesuffix(".")
            if not name or not _valid_name(name):
                raise _refused(f"callback_url's host {echo(host)} is not a valid host name")
            if not self.allowed.admits_name(name):
                raise _refused(f"callback_url's host {echo(name)} is not among this server's allowed callback hosts")
            if name != host:
                parsed = parsed.copy_with(host=name)
        normalized = str(parsed.copy_with(fragment=None))
        if len(normalized) > MAX_URL_CHARS:
            raise _refused(f"callback_url is longer than {MAX_URL_CHARS} characters once encoded")
        return normalized

    def screen(self, addresses: Sequence[IPAddress]) -> str | None:
        """Why a delivery to a host that resolved to ``addresses`` is refused; None when every
        one of them is public or allowed by an IP or network entry."""
        if not addresses:
            return "the host resolved to no address"
        for address in addresses:
            if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
                return f"the host resolved to {address}, a scoped address"
            if not (is_public(address) or self.allowed.admits_address(address)):
                shown = address
                if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                    shown = address.ipv4_mapped  # ::ffff:7f00:1 reads better as 127.0.0.1
                return f"the host resolved to {shown}, not a public address, and no allowed network holds it"
        return None

    def retry_delay(self, attempt: int, rng: random.Random) -> float | None:
        """Seconds to wait after ``attempt`` attempts failed (1 after the first), or None when
        that was the last: full jitter over ``min(max, base * 2**(attempt - 1))``, so that the
        first retry comes after about ``base`` and receivers back from an outage are not hit by
        every job at once."""
        if attempt < 1:
            raise ValueError("attempt counts from 1")
        if attempt >= self.max_attempts:
            return None
        ceiling = min(self.retry_max_s, self.retry_base_s * 2.0 ** min(attempt - 1, 60))
        return rng.uniform(0.0, ceiling)

    async def deliver(self, url: str, body: bytes) -> Attempt:
        """One attempt to POST ``body`` (the job, as JSON) to ``url``. Never raises for what the
        receiver, its name or its network do: every failure is an ``Attempt`` with a reason."""
        try:
            checked = httpx.URL(self.check(url))
        except ServiceError as exc:
            return _failed(exc.message)
        # The httpx timeouts bound each phase; this bounds a receiver that trickles its answer.
        limit = self.connect_timeout_s + self.read_timeout_s
        try:
            return await asyncio.wait_for(self._attempt(checked, body), timeout=limit)
        except asyncio.TimeoutError:
            return _failed(f"no answer within {limit:g}s")

    async def _attempt(self, url: httpx.URL, body: bytes) -> Attempt:
        name = url.raw_host.decode("ascii")
        literal = _ip(name)
        if literal is not None:
            addresses = [literal]
        else:
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                found = await asyncio.wait_for(self.resolve(name, port), timeout=self.connect_timeout_s)
            except (OSError, ValueError, asyncio.TimeoutError) as exc:
                return _failed(f"could not resolve {name}: {str(exc) or 'timed out'}")
            parsed = [_ip(text) for text in found]
            if None in parsed:
                return _failed(f"could not resolve {name}: the resolver gave no IP address")
            addresses = list(dict.fromkeys(a for a in parsed if a is not None))
        refusal = self.screen(addresses)
        if refusal is not None:
            log.warning("callback to %s refused: %s", name, refusal)
            return _failed(f"refused: {refusal}")
        # TLS is checked against the name, whatever address the connection goes to.
        extensions = {"sni_hostname": name} if url.scheme == "https" and literal is None else {}
        timeout = httpx.Timeout(
            connect=self.connect_timeout_s, read=self.read_timeout_s, write=self.read_timeout_s, pool=None
        )
        # A client per attempt, so no connection opened (and verified) for one name ever carries
        # a request for another that resolved to the same address; no proxy from the environment
        # (it would connect to the name, not to the screened address); no redirects.
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, trust_env=False, verify=self.tls or system_tls()
        ) as client:
            headers = self._headers(url, body)
            error = "no address to connect to"
            for address in addresses[:MAX_ADDRESSES_TRIED]:
                request = client.build_request(
                    "POST", url.copy_with(host=str(address)), content=body, headers=headers, extensions=extensions
                )
                try:
                    response = await client.send(request, stream=True)
                except httpx.ConnectTimeout:
                    error = f"connecting to {address} timed out"
                    continue
                except httpx.ConnectError as exc:
                    error = f"could not connect to {address}: {exc}"
                    continue
                except httpx.TimeoutException:
                    return _failed(f"the receiver did not answer within {self.read_timeout_s:g}s")
                except httpx.HTTPError as exc:
                    return _failed(f"the exchange with the receiver failed: {type(exc).__name__}")
                # The body is never read: only the status counts.
                await response.aclose()
                return _outcome(response.status_code)
            return _failed(error)

    def _headers(self, url: httpx.URL, body: bytes) -> dict[str, str]:
        secret = self.secret
        assert secret is not None, "check refuses every URL without a secret"
        timestamp = int(self.clock())
        return {
            "Host": url.netloc.decode("ascii"),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Connection": "close",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(secret, timestamp, body),
        }


def _outcome(status: int) -> Attempt:
    if 200 <= status < 300:
        return Attempt(ok=True, status=status, error=None)
    if 300 <= status < 400:
        return _failed(f"the receiver redirected ({status}); redirects are not followed", status)
    return _failed(f"the receiver answered {status}", status)
