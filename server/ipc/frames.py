"""Messages over a Unix stream socket: a small JSON header and an optional binary payload.

A frame is ``!II`` (header length, payload length), the orjson header, then the payload.
Pixels never travel here (they are in shared memory); payloads carry model outputs only.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import orjson

_LENGTHS = struct.Struct("!II")
# A header is a few hundred bytes (a catalog snapshot with every label list: a few hundred KB).
MAX_HEADER_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 1024 * 1024 * 1024

Header = dict[str, Any]


class FrameError(Exception):
    """The peer sent something that is not a frame: the connection cannot be trusted further."""


def encode(header: Header, payload: bytes | memoryview = b"") -> list[bytes | memoryview]:
    head = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    return [_LENGTHS.pack(len(head), len(payload)), head, payload] if payload else [_LENGTHS.pack(len(head), 0) + head]


def send(writer: asyncio.StreamWriter, header: Header, payload: bytes | memoryview = b"") -> None:
    """Buffered, never blocks: frames written by one task arrive in the order written."""
    writer.writelines(encode(header, payload))


async def receive(
    reader: asyncio.StreamReader, max_header_bytes: int = MAX_HEADER_BYTES, max_payload_bytes: int = MAX_PAYLOAD_BYTES
) -> tuple[Header, bytes]:
    """The next frame; ``asyncio.IncompleteReadError`` when the peer closed."""
    header_length, payload_length = _LENGTHS.unpack(await reader.readexactly(_LENGTHS.size))
    if header_length > max_header_bytes or payload_length > max_payload_bytes:
        raise FrameError(f"frame of {header_length} + {payload_length} bytes")
    try:
        header = orjson.loads(await reader.readexactly(header_length))
    except orjson.JSONDecodeError as exc:
        raise FrameError(f"a frame's header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("a frame's header must be an object")
    payload = await reader.readexactly(payload_length) if payload_length else b""
    return header, payload
