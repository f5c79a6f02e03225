"""Client API keys, stored hashed: a file of lines
``<name> <sha256 hex of the key> [rate=<limit>] [cpu=<share>]``. The options are a tier per
client: ``rate=500/second`` (or ``50/second;1000/minute``) replaces the server's
``IMGSERVE_RATE_LIMIT`` for that key, ``cpu=0.5`` its ``IMGSERVE_CPU_LIMIT``.

The server never holds a key itself, only its SHA-256; ``imgserve hash-key`` makes a key and
its line. The file is re-read when it changes (checked at most once a second), so keys can
be added and revoked without a restart. A file that cannot be read or parsed keeps the keys
read last, or refuses every key if there were none: it fails closed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import limits

log = logging.getLogger(__name__)

_LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.@-]{1,64})\s+(?:sha256:)?(?P<digest>[0-9a-f]{64})(?P<options>(?:\s+\S+)*)$")
RECHECK_S = 1.0


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key_line(name: str) -> tuple[str, str]:
    """A fresh random key and the line that admits it."""
    key = secrets.token_urlsafe(32)
    return key, f"{name} {digest(key)}"


@dataclass(frozen=True)
class Client:
    name: str
    rate_limit: str | None = None
    """This key's own rate limit; None: the server's."""
    cpu_limit: float | None = None
    """This key's own CPU share (CPU-seconds per second); None: the server's."""


def _client(name: str, options: list[str]) -> Client:
    values = dict(option.partition("=")[::2] for option in options)
    unknown = sorted(set(values) - {"rate", "cpu"})
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}; use rate=<limit> and cpu=<share>")
    rate, cpu = values.get("rate"), values.get("cpu")
    if rate is not None:
        limits.parse_many(rate)  # raises ValueError for a malformed limit
    share = float(cpu) if cpu is not None else None
    if share is not None and not 0 < share < float("inf"):
        raise ValueError("cpu must be a positive number of CPU-seconds per second")
    return Client(name, rate, share)


def parse_key_file(text: str) -> dict[str, Client]:
    """Digest to client. Raises ValueError naming the first bad line."""
    clients: dict[str, Client] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"line {number} is not '<name> <sha256 hex> [rate=<limit>] [cpu=<share>]'")
        try:
            clients[match["digest"]] = _client(match["name"], match["options"].split())
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from exc
    return clients


class ApiKeys:
    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._clients: dict[str, Client] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -RECHECK_S
        self._refresh()

    def client_of(self, key: str) -> Client | None:
        """The key's client, or None for an unknown key."""
        if self._clock() - self._checked_at >= RECHECK_S:
            self._refresh()
        return self._clients.get(digest(key))

    def _refresh(self) -> None:
        self._checked_at = self._clock()
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            clients = parse_key_file(self._path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            kept = len(self._clients)
            log.error("API keys file %s not loaded (%s); keeping the %d keys read before", self._path, exc, kept)
            return
        self._stamp = stamp
        self._clients = clients
        log.info("loaded %d API keys from %s", len(clients), self._path)
