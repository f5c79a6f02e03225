"""What the gRPC bad-input tests share: ModelInferRequest builders, calls that send raw bytes
(so a test can send what no stub would), and a protobuf-aware mutator for serialized requests.

The mutator reads a valid request into a tree of wire fields (``parse``), mutates the tree, then
writes it back (``serialize``) with every enclosing length recomputed, so a mutation deep inside
(a shape's dimension, a BYTES element's length prefix, a photo's bytes) reaches the server's own
checks instead of failing protobuf's framing; byte-level mutations of the result (truncation,
bit flips, splices) test the framing too. Everything is a pure function of its inputs and a
``random.Random``: a mutant is replayed from its seed string alone (``mutate``).
"""

from __future__ import annotations

import copy
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from server.grpc_api import inference_pb2 as pb
from tests.helpers import MODEL
from tests.model_contract import image_mutations

SERVICE = "/inference.GRPCInferenceService"
INFER = f"{SERVICE}/ModelInfer"

# Status codes that say the server itself failed: a client's input must never produce them.
SERVER_FAULTS = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


# --- calls ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    code: grpc.StatusCode
    details: str
    trailing: dict[str, str]
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.code is grpc.StatusCode.OK


def _trailing(call: Any) -> dict[str, str]:
    return {key: value for key, value in call.trailing_metadata() or () if isinstance(value, str)}


def _answer(invoke: Callable[[], tuple[bytes, Any]]) -> Answer:
    try:
        body, call = invoke()
    except grpc.RpcError as error:
        return Answer(error.code(), error.details() or "", _trailing(error))
    return Answer(grpc.StatusCode.OK, "", _trailing(call), body)


def infer(
    channel: grpc.Channel,
    message: bytes | pb.ModelInferRequest,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 30,
) -> Answer:
    """``ModelInfer`` with ``message`` sent as it is: bytes need not be a valid request."""
    data = message if isinstance(message, bytes) else message.SerializeToString()
    method = channel.stream_unary(INFER)  # no serializers: bytes on the wire
    return _answer(lambda: method.with_call(iter([data]), metadata=tuple(metadata), timeout=timeout))


def unary(
    channel: grpc.Channel,
    method: str,
    message: bytes | Any,
    metadata: Sequence[tuple[str, str]] = (),
    timeout: float = 30,
) -> Answer:
    """Any unary method of the inference service, by name ("ServerLive"), with raw bytes."""
    data = message if isinstance(message, bytes) else message.SerializeToString()
    call = channel.unary_unary(f"{SERVICE}/{method}")
    return _answer(lambda: call.with_call(data, metadata=tuple(metadata), timeout=timeout))


def top_classes(answer: Answer) -> list[list[str]]:
    """The classification extension's answer (raw BYTES "score:index:label"), as labels per row."""
    assert answer.ok, (answer.code, answer.details)
    response = pb.ModelInferResponse.FromString(answer.body)
    (output,) = response.outputs
    assert output.datatype == "BYTES", output
    rows, k = output.shape
    raw = response.raw_output_contents[0]
    elements, offset = [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    labels = [e.split(":")[2] for e in elements]
    return [labels[r * k : (r + 1) * k] for r in range(rows)]


# --- requests ---------------------------------------------------------------------------------


def pack_bytes(elements: Sequence[bytes]) -> bytes:
    """BYTES elements in raw form: each behind its 4-byte little-endian length."""
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def encoded_request(
    images: Sequence[bytes],
    *,
    raw: bool = True,
    classification: int | None = 1,
    timeout_us: int | None = None,
    model: str = MODEL,
    version: str = "",
    input_name: str = "images",
) -> pb.ModelInferRequest:
    """Encoded images as one BYTES input, raw (as tritonclient sends them) or typed."""
    request = pb.ModelInferRequest(model_name=model, model_version=version, id="bad-input")
    tensor = request.inputs.add(name=input_name, datatype="BYTES", shape=[len(images)])
    if raw:
        request.raw_input_contents.append(pack_bytes(images))
    else:
        tensor.contents.bytes_contents.extend(images)
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    if classification is not None:
        output = request.outputs.add(name="probabilities")
        output.parameters["classification"].int64_param = classification
    return request


def pixels_request(
    pixels: np.ndarray, *, datatype: str = "UINT8", raw: bool = True, model: str = MODEL
) -> pb.ModelInferRequest:
    """A batch of pixel images as one numeric input, raw or typed."""
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="images", datatype=datatype, shape=list(pixels.shape))
    values = pixels.astype(np.uint8 if datatype == "UINT8" else np.float32)
    if raw:
        request.raw_input_contents.append(values.tobytes())
    elif datatype == "UINT8":
        tensor.contents.uint_contents.extend(values.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(values.ravel().tolist())
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 1
    return request


# --- the wire format --------------------------------------------------------------------------

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5

# What each length-delimited field of a ModelInferRequest holds, per message: a sub-message, a
# packed run of varints, or (any field not listed) opaque bytes: strings, raw tensors.
SCHEMA: dict[str, dict[int, str]] = {
    "request": {4: "parameter_entry", 5: "input", 6: "output"},
    "parameter_entry": {2: "parameter"},  # map<string, InferParameter>: key 1, value 2
    "parameter": {},
    "input": {3: "packed", 4: "parameter_entry", 5: "contents"},
    "output": {2: "parameter_entry"},
    "contents": {1: "packed", 2: "packed", 3: "packed", 4: "packed", 5: "packed"},  # 6, 7: fixed-width
}


@dataclass
class Field:
    number: int
    wire: int
    value: int | bytes | list[Field] | list[int]
    kind: str = "bytes"
    """A SCHEMA message name, "packed", "bytes", or "number" (varint and fixed-width fields)."""


def varint(value: int) -> bytes:
    """Any non-negative integer as a varint, even one too long for protobuf (over 64 bits)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, offset: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[offset]
        offset += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, offset


def parse(data: bytes, message: str = "request") -> list[Field]:
    """A valid message's fields, recursively (only for seeds: malformed input raises)."""
    fields: list[Field] = []
    offset = 0
    while offset < len(data):
        key, offset = _read_varint(data, offset)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            number_value, offset = _read_varint(data, offset)
            fields.append(Field(number, wire, number_value, "number"))
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
            fields.append(Field(number, wire, int.from_bytes(data[offset : offset + size], "little"), "number"))
            offset += size
        elif wire == LENGTH:
            length, offset = _read_varint(data, offset)
            payload = data[offset : offset + length]
            offset += length
            kind = SCHEMA[message].get(number, "bytes") if message in SCHEMA else "bytes"
            if kind in SCHEMA:
                fields.append(Field(number, wire, parse(payload, kind), kind))
            elif kind == "packed":
                values, at = [], 0
                while at < len(payload):
                    value, at = _read_varint(payload, at)
                    values.append(value)
                fields.append(Field(number, wire, values, kind))
            else:
                fields.append(Field(number, wire, payload))
        else:
            raise ValueError(f"wire type {wire} in a seed")
    return fields


def _unsigned(value: int) -> int:
    return value & (2**64 - 1) if value < 0 else value  # negative: as int64 is written


def payload(f: Field) -> bytes:
    """A field's encoded value, without its key (and, length-delimited, without its length)."""
    if f.wire == VARINT:
        return varint(_unsigned(f.value))  # type: ignore[arg-type]
    if f.wire in (FIXED64, FIXED32):
        size = 8 if f.wire == FIXED64 else 4
        return (f.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")  # type: ignore[operator]
    if f.kind in SCHEMA:
        return serialize(f.value)  # type: ignore[arg-type]
    if f.kind == "packed":
        return b"".join(varint(_unsigned(v)) for v in f.value)  # type: ignore[union-attr]
    return bytes(f.value)  # type: ignore[arg-type]


def serialize(fields: Sequence[Field]) -> bytes:
    """The inverse of ``parse``, every length recomputed."""
    out = bytearray()
    for f in fields:
        out += varint((f.number << 3) | f.wire)
        data = payload(f)
        out += varint(len(data)) + data if f.wire == LENGTH else data
    return bytes(out)


def _walk(fields: list[Field], path: tuple[str, ...] = ()) -> list[tuple[list[Field], int, tuple[str, ...]]]:
    """Every field in the tree: (its parent list, its index there, the message kinds above it)."""
    found = []
    for index, f in enumerate(fields):
        found.append((fields, index, path))
        if f.kind in SCHEMA:
            found += _walk(f.value, (*path, f.kind))  # type: ignore[arg-type]
    return found


# --- mutations: each takes the tree and a Random, changes the tree, says what it did ------------

# Numbers an attacker reaches for, as the wire carries them: int64 and uint64 extremes, 2**63
# (read back as -2**63), and varints longer than 64 bits.
INTERESTING_NUMBERS = (0, 1, 2, 3, 4, 5, 64, 65, 255, 256, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63,
                       2**64 - 1, 2**64, 2**70)  # fmt: skip


def set_number(tree: list[Field], rng: random.Random) -> str:
    """A varint anywhere (a dimension, a parameter, a typed value) set to an extreme."""
    fields = [parent[index] for parent, index, _ in _walk(tree)]
    numbers = [f for f in fields if f.kind == "number"]
    packed = [(f, at) for f in fields if f.kind == "packed" for at in range(len(f.value))]  # type: ignore[arg-type]
    value = rng.choice(INTERESTING_NUMBERS) if rng.random() < 0.8 else rng.getrandbits(rng.choice((8, 32, 64)))
    if packed and (not numbers or rng.random() < 0.6):
        target, at = rng.choice(packed)
        target.value[at] = value  # type: ignore[index]
        return f"packed field {target.number}[{at}] = {value}"
    if not numbers:
        return "no number to set"
    number = rng.choice(numbers)
    number.value = value if number.wire == VARINT else value & ((1 << (64 if number.wire == FIXED64 else 32)) - 1)
    return f"field {number.number} = {value}"


def _bytes_fields(tree: list[Field]) -> list[Field]:
    return [parent[index] for parent, index, _ in _walk(tree) if parent[index].kind == "bytes"]


def rewrite_bytes(tree: list[Field], rng: random.Random) -> str:
    """A string or raw tensor truncated, extended, emptied, or made invalid UTF-8."""
    candidates = _bytes_fields(tree)
    if not candidates:
        return "no bytes field"
    target = rng.choice(candidates)
    data = bytes(target.value)  # type: ignore[arg-type]
    how = rng.choice(["truncate", "extend", "empty", "utf8", "long", "random"])
    if how == "truncate" and data:
        target.value = data[: rng.randrange(len(data))]
    elif how == "extend":
        target.value = data + rng.randbytes(rng.randint(1, 16))
    elif how == "empty":
        target.value = b""
    elif how == "utf8":
        target.value = data + b"\xff\xfe"
    elif how == "long":
        target.value = data * rng.randint(2, 300) if data else b"x" * 300
    else:
        target.value = rng.randbytes(rng.randint(0, 64))
    return f"{how} bytes of field {target.number} ({len(data)} -> {len(target.value)})"  # type: ignore[arg-type]


def _bytes_elements(tree: list[Field]) -> list[tuple[Field, int]]:
    """In a request with a BYTES input, its raw contents' (field 7's) length-prefixed elements:
    (field, offset of an element's length prefix)."""
    inputs = [f.value for f in tree if f.kind == "input"]
    if not any(Field(2, LENGTH, b"BYTES") in fields for fields in inputs):  # type: ignore[operator]
        return []
    found = []
    for f in tree:
        if f.number == 7 and f.wire == LENGTH and f.kind == "bytes":
            data, offset = bytes(f.value), 0  # type: ignore[arg-type]
            while offset + 4 <= len(data):
                (length,) = struct.unpack_from("<I", data, offset)
                found.append((f, offset))
                offset += 4 + length
    return found


def lie_about_a_length(tree: list[Field], rng: random.Random) -> str:
    """A BYTES element's 4-byte length prefix set to an extreme, or off by a little."""
    elements = _bytes_elements(tree)
    if not elements:
        return rewrite_bytes(tree, rng)
    target, offset = rng.choice(elements)
    data = bytearray(target.value)  # type: ignore[arg-type]
    (declared,) = struct.unpack_from("<I", data, offset)
    value = rng.choice([0, 1, declared - 1, declared + 1, declared * 2, 2**31 - 1, 2**32 - 1]) & 0xFFFFFFFF
    struct.pack_into("<I", data, offset, value)
    target.value = bytes(data)
    return f"BYTES length at {offset} of field 7: {declared} -> {value}"


def mutate_an_image(tree: list[Field], rng: random.Random) -> str:
    """A photo inside a BYTES element (raw or typed) mutated as the decode fuzzer does, with every
    length around it fixed, so the broken image reaches the decoder."""
    raw = _bytes_elements(tree)
    typed = [parent[index] for parent, index, path in _walk(tree) if path[-1:] == ("contents",)
             and parent[index].number == 8]  # fmt: skip
    seed = str(rng.getrandbits(32))
    if typed and (not raw or rng.random() < 0.5):
        target = rng.choice(typed)
        image, what = image_mutations.mutate(bytes(target.value), seed)  # type: ignore[arg-type]
        target.value = image
        return f"typed image: {', '.join(what)}"
    if not raw:
        return rewrite_bytes(tree, rng)
    target, offset = rng.choice(raw)
    data = bytes(target.value)  # type: ignore[arg-type]
    (length,) = struct.unpack_from("<I", data, offset)
    image, what = image_mutations.mutate(data[offset + 4 : offset + 4 + length], seed)
    target.value = data[:offset] + len(image).to_bytes(4, "little") + image + data[offset + 4 + length :]
    return f"raw image at {offset}: {', '.join(what)}"


def drop_or_repeat(tree: list[Field], rng: random.Random) -> str:
    """A field removed, or repeated in place (a second input, shape, output, raw content)."""
    parent, index, _ = rng.choice(_walk(tree))
    if rng.random() < 0.5:
        dropped = parent.pop(index)
        return f"drop field {dropped.number}"
    copies = rng.choice([1, 1, 2, 16, 17])
    parent[index + 1 : index + 1] = [copy.deepcopy(parent[index]) for _ in range(copies)]
    return f"repeat field {parent[index].number} x{copies}"


def renumber(tree: list[Field], rng: random.Random) -> str:
    """A field given another number or wire type: data where the schema does not expect it."""
    parent, index, _ = rng.choice(_walk(tree))
    target = parent[index]
    if rng.random() < 0.5:
        old, target.number = target.number, rng.choice([1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 2047])
        return f"field {old} renumbered {target.number}"
    parent[index] = Field(target.number, LENGTH, payload(target))  # its encoding, as opaque bytes
    return f"field {target.number} rewritten as bytes"


TREE_MUTATIONS: tuple[Callable[[list[Field], random.Random], str], ...] = (
    set_number,
    set_number,
    rewrite_bytes,
    lie_about_a_length,
    mutate_an_image,
    mutate_an_image,
    drop_or_repeat,
    renumber,
)


def splice(data: bytes, others: Sequence[bytes], rng: random.Random) -> tuple[bytes, str]:
    """The start of this message and the end of another seed."""
    other = rng.choice(others)
    at, start = rng.randrange(len(data)), rng.randrange(len(other))
    return data[:at] + other[start:], f"splice [:{at}] with another seed's [{start}:]"


@dataclass
class Mutant:
    data: bytes
    what: list[str] = field(default_factory=list)


def mutate(seed_message: bytes, others: Sequence[bytes], seed: str) -> Mutant:
    """One to three stacked mutations of a serialized request, all drawn from ``Random(seed)``:
    mostly through the tree (so enclosing lengths stay right), sometimes of the bytes."""
    rng = random.Random(seed)
    tree = parse(seed_message)
    mutant = Mutant(b"")
    for _ in range(rng.randint(1, 3)):
        mutation = rng.choice(TREE_MUTATIONS)
        mutant.what.append(f"{mutation.__name__}: {mutation(tree, rng)}")
    data = serialize(tree)
    if data and rng.random() < 0.25:
        byte_mutation = rng.choice(["truncate", "flip_bits", "overwrite_run", "splice"])
        if byte_mutation == "splice":
            data, what = splice(data, others, rng)
        else:
            data, what = getattr(image_mutations, byte_mutation)(data, rng)
        mutant.what.append(f"{byte_mutation}: {what}")
    mutant.data = data
    return mutant
