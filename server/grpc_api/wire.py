"""A look at a serialized ``ModelInferRequest``'s top-level fields, before it is parsed: which
model it names, and how much of it is raw tensor bytes.

Parsing a message of millions of typed numbers takes long and holds the GIL; one of raw bytes
parses as fast as it copies. The look decides where the parse runs (the event loop, a thread, or
a worker process, as for large JSON) and finds the model whose limits the parse checks against,
without parsing anything. It reads at most ``MOST_FIELDS`` top-level fields: no request a client
makes has more (at most 16 inputs, outputs and parameters each, and three strings).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.v2_codec import ProtocolError

MODEL_NAME, MODEL_VERSION, RAW_INPUT_CONTENTS = 1, 2, 7
"""``ModelInferRequest``'s field numbers."""
MOST_FIELDS = 256
MOST_PARSED_HERE = 64 * 1024
"""Bytes besides raw tensor data a message may have and still be parsed on the event loop: a
real request's are its names and shapes, well under a kilobyte (64 KB parse in about 0.5 ms)."""
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Peek:
    model_name: str
    model_version: str
    raw_bytes: int
    """Bytes of ``raw_input_contents``."""

    def parses_fast(self, size: int) -> bool:
        """Whether a message of ``size`` bytes is raw tensor data but for ``MOST_PARSED_HERE``."""
        return size - self.raw_bytes <= MOST_PARSED_HERE


def peek_request(message: bytes) -> Peek:
    """The model a serialized ``ModelInferRequest`` names, and its raw bytes; a ``ProtocolError``
    for what is no such message (bad framing, a field that runs past the end, too many fields)."""
    strings: dict[int, bytes] = {}
    offset, fields, raw_bytes = 0, 0, 0
    while offset < len(message):
        fields += 1
        if fields > MOST_FIELDS:
            raise ProtocolError(f"the message has more than {MOST_FIELDS} top-level fields; no request has")
        key, offset = _varint(message, offset)
        number, wire_type = key >> 3, key & 7
        if wire_type == _VARINT:
            _, offset = _varint(message, offset)
        elif wire_type == _FIXED64:
            offset += 8
        elif wire_type == _FIXED32:
            offset += 4
        elif wire_type == _LENGTH:
            length, offset = _varint(message, offset)
            if number in (MODEL_NAME, MODEL_VERSION):
                strings[number] = message[offset : offset + length]
            elif number == RAW_INPUT_CONTENTS:
                raw_bytes += length
            offset += length
        else:
            raise _not_a_request()
        if offset > len(message):
            raise _not_a_request()
    try:
        name, version = (strings.get(n, b"").decode() for n in (MODEL_NAME, MODEL_VERSION))
    except UnicodeDecodeError:
        raise _not_a_request() from None
    return Peek(name, version, raw_bytes)


def _not_a_request() -> ProtocolError:
    return ProtocolError("the message is not a ModelInferRequest")


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while offset < len(data) and shift < 64:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, offset
        shift += 7
    raise _not_a_request()
