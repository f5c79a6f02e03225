"""Every bad request of the HTTP suites, sent through gRPC to a real server (uvicorn and the gRPC
server on loopback, over the real app and a gated fake runtime): each gets its status code and
a message that says why, never a server fault (INTERNAL, UNKNOWN), and never disturbs other
requests: a good request right after still succeeds. Then a mutation fuzz of real requests.

The HTTP twin of each test is named in its docstring (file::test). The fuzz's budget comes from
``IMGSERVE_FUZZ_MUTANTS`` and ``IMGSERVE_FUZZ_SEED``, as the decode fuzzer's does.
"""

from __future__ import annotations

import io
import math
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from PIL import Image

from loadtests.batching_bench import write_model
from loadtests.server_process import free_port
from model_contract.errors import MAX_ECHO_CHARS
from server.api_keys import digest
from server.app import create_app
from server.grpc_api import inference_pb2 as pb
from server.settings import BatchingSettings, HttpSettings, LimitSettings, Settings
from tests.fakes import GatedRuntime
from tests.helpers import MODEL, fake_app, heavy_png, png, poll
from tests.live_server import live_server
from tests.model_contract import image_mutations
from tests.served import served_with_grpc
from tests.server.grpc.bad_input import (
    LENGTH,
    SERVER_FAULTS,
    Answer,
    Field,
    encoded_request,
    infer,
    mutate,
    pixels_request,
    serialize,
    top_classes,
    unary,
    varint,
)

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
UNAVAILABLE, EXHAUSTED = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
ADMIN = "s3cret-admin-token"
ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


@dataclass
class Served:
    url: str
    channel: grpc.Channel
    app: Any
    runtime: GatedRuntime

    def sample(self, name: str, labels: dict[str, str]) -> float:
        return self.app.state.metrics.registry.get_sample_value(name, labels) or 0.0

    def model_sample(self, name: str, **labels: str) -> float:
        return self.sample(name, {"model": MODEL, "version": "1", **labels})

    def decoded(self) -> float:
        return sum(self.model_sample("imgserve_images_decoded_total", outcome=o) for o in ("ok", "refused"))

    def ready(self) -> bool:
        return bool(self.app.state.service.readiness().ready)

    def queue_depth(self) -> float:
        return self.model_sample("imgserve_queue_depth")

    def calls_answered(self, *codes: grpc.StatusCode) -> float:
        """gRPC calls the server answered with any of ``codes``, every method together."""
        total = 0.0
        for metric in self.app.state.metrics.registry.collect():
            if metric.name == "imgserve_grpc_requests":
                total += sum(
                    s.value
                    for s in metric.samples
                    if s.name.endswith("_total") and s.labels["code"] in {c.name for c in codes}
                )
        return total

    def good(self, value: int = 3, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        """A good request succeeds, and is classified right."""
        answer = infer(self.channel, encoded_request([png(value)]), metadata)
        assert top_classes(answer) == [[f"class{value % 10}"]], answer


@contextmanager
def serve(
    tmp_path: Path, runtime: GatedRuntime | None = None, *, ready: bool = True, faults: bool = False, **settings: Any
) -> Iterator[Served]:
    """The real app over the fake model, with gRPC, on loopback. On the way out: no call was
    answered with a server fault, unless ``faults`` (the model itself failed)."""
    runtime = runtime or GatedRuntime()
    app = fake_app(tmp_path, runtime, **settings)
    grpc_settings = app.state.settings.model_copy(update={"host": "127.0.0.1", "grpc_port": free_port()})
    target = f"127.0.0.1:{grpc_settings.grpc_port}"
    # Readiness from the app itself: /ready may need a key (public_probes=False).
    with live_server(app, ready_path=None, grpc=grpc_settings) as url, grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        served = Served(url, channel, app, runtime)
        if ready:
            poll(served.ready)
        yield served
        runtime.gate.set()
        if not faults:
            assert served.calls_answered(*SERVER_FAULTS) == 0


def in_background(call: Any, *args: Any, **kwargs: Any) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def start_blocking_call(served: Served, value: int = 1) -> Future[Answer]:
    """Shut the gate and send one request; return once the runtime is stuck inside it."""
    served.runtime.gate.clear()
    calls = served.runtime.entered
    blocked = in_background(infer, served.channel, encoded_request([png(value)]))
    poll(lambda: served.runtime.entered == calls + 1)
    return blocked


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server (default limits, an admin token) for the module's refusals that change nothing
    on the server: each test still sends a good request after its bad ones."""
    with serve(tmp_path_factory.mktemp("shared"), admin_token=ADMIN) as served:
        yield served


def assert_refused(answer: Answer, code: grpc.StatusCode, *words: str) -> None:
    assert answer.code is code, answer
    assert all(word in answer.details for word in words), answer
    assert len(answer.details) < 400, answer  # short, whatever the client sent


# --- malformed calls ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message", [b"\xff\xff\xff", b"\x0a\x02\xff\xfe", b"\x2a\x80\x80\x80\x80\x10", b"\x0a"],
    ids=["garbage", "invalid-utf8", "length-past-the-end", "truncated"],
)  # fmt: skip
def test_malformed_messages_are_invalid_argument_on_every_method_that_reads_one(shared: Served, message: bytes) -> None:
    """Twin of test_v2_protocol.py::test_protocol_errors_come_back_as_v2_errors (a body that is
    not JSON) and test_openapi_fuzz.py (no operation answers a server error)."""
    admin = (("authorization", f"Bearer {ADMIN}"),)
    assert_refused(infer(shared.channel, message), INVALID, "not a ModelInferRequest")
    for method in ("ModelReady", "ModelMetadata", "ModelConfig", "ModelStatistics"):
        assert_refused(unary(shared.channel, method, message), INVALID, f"not a {method}Request")
    for method in ("RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"):
        assert_refused(unary(shared.channel, method, message, admin), INVALID, f"not a {method}Request")
    for method in ("ServerLive", "ServerReady", "ServerMetadata"):  # their requests are empty: not read
        assert unary(shared.channel, method, message).ok
    shared.good()


@pytest.mark.parametrize("method", [HEALTH_CHECK, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"])
def test_malformed_messages_to_health_and_reflection_are_invalid_argument(
    shared: Served, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    try:
        if "Reflection" in method:
            list(shared.channel.stream_stream(method)(iter([b"\xff\xff"]), timeout=10))
        else:
            shared.channel.unary_unary(method)(b"\xff\xff", timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    shared.good()
    assert code is INVALID
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


def test_a_call_without_a_message_or_whose_message_never_comes_is_refused_and_frees_its_slot(tmp_path: Path) -> None:
    """Twin of test_body_deadline.py (a body that does not arrive in time is 408) and of the
    empty body: the call's request slot is released either way."""
    limits = LimitSettings(max_requests_in_progress=1)
    with serve(tmp_path, limits=limits, http=HttpSettings(body_timeout_s=0.3)) as served:
        method = served.channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
        try:
            method(iter([]), timeout=10)
        except grpc.RpcError as error:
            assert_refused(Answer(error.code(), error.details() or "", {}), INVALID, "carried no ModelInferRequest")
        else:
            raise AssertionError("an empty call was answered")
        never = threading.Event()

        def silent() -> Iterator[bytes]:
            never.wait(10)  # the message never comes while the server waits
            return
            yield b""

        started = time.monotonic()
        try:
            method(silent(), timeout=10)
        except grpc.RpcError as error:
            assert_refused(Answer(error.code(), error.details() or "", {}), DEADLINE, "did not arrive within 0.3 s")
        else:
            raise AssertionError("a silent call was answered")
        finally:
            never.set()
        assert time.monotonic() - started < 5
        served.good()  # the only request slot is free again


def test_a_call_carrying_two_requests_is_invalid_argument(shared: Served) -> None:
    one = encoded_request([png(1)]).SerializeToString()
    method = shared.channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
    try:
        method(iter([one, encoded_request([png(2)]).SerializeToString()]), timeout=10)
        code = grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
    shared.good()
    assert code is INVALID


def test_a_message_over_the_body_limit_and_metadata_over_the_header_limit_are_resource_exhausted(
    tmp_path: Path,
) -> None:
    """Twins of test_admission.py::test_a_chunked_body_stops_at_the_body_limit (413) and of the
    431 for headers past IMGSERVE_HTTP__MAX_HEADER_BYTES: gRPC's own limits, set from HTTP's."""
    limits = LimitSettings(max_body_bytes=4000, max_body_bytes_in_flight=4000)
    with serve(tmp_path, limits=limits, http=HttpSettings(max_header_bytes=2048)) as served:
        big = encoded_request([png(1) + b"\0" * 5000])
        assert_refused(infer(served.channel, big), EXHAUSTED, "larger than max")
        assert_refused(infer(served.channel, b"\0" * 5000), EXHAUSTED, "larger than max")
        assert_refused(infer(served.channel, encoded_request([png(1)]), [("x-junk", "j" * 3000)]), EXHAUSTED)
        served.good()  # the refused bytes are not held against the in-flight budget either
        fits = encoded_request([png(2) + b"\0" * 3000])
        assert top_classes(infer(served.channel, fits)) == [["class2"]]


# --- the model, its version and its tensors ------------------------------------------------------


@pytest.mark.parametrize(
    "version", ["²", "9" * 5000, "1.0", "-1", "0x1", "01", "7"],
    ids=["superscript-two", "5000-digits", "float", "negative", "hex", "zero-padded", "absent"],
)  # fmt: skip
def test_an_unknown_model_or_version_is_not_found_everywhere(shared: Served, version: str) -> None:
    """Twin of test_route_parameters.py::test_a_version_that_is_not_a_version_number_is_404_everywhere
    and of the unknown model of test_v2_protocol.py::test_protocol_errors_come_back_as_v2_errors."""
    ch = shared.channel
    assert_refused(infer(ch, encoded_request([png(1)], version=version)), NOT_FOUND, "version")
    assert_refused(unary(ch, "ModelMetadata", pb.ModelMetadataRequest(name=MODEL, version=version)), NOT_FOUND)
    assert_refused(unary(ch, "ModelConfig", pb.ModelConfigRequest(name=MODEL, version=version)), NOT_FOUND)
    assert_refused(unary(ch, "ModelStatistics", pb.ModelStatisticsRequest(name=MODEL, version=version)), NOT_FOUND)
    ready = unary(ch, "ModelReady", pb.ModelReadyRequest(name=MODEL, version=version))
    assert ready.ok and not pb.ModelReadyResponse.FromString(ready.body).ready
    long_name = "m" * 7000
    assert_refused(infer(ch, encoded_request([png(1)], model=long_name)), NOT_FOUND, "no model named")
    assert_refused(
        unary(ch, "ModelMetadata", pb.ModelMetadataRequest(name="no_such_model")), NOT_FOUND, "no_such_model"
    )
    assert top_classes(infer(ch, encoded_request([png(4)], version="1"))) == [["class4"]]


def tensor_request(**fields: Any) -> pb.ModelInferRequest:
    """A valid UINT8 request for the fake model, then ``fields`` applied to its one input."""
    request = pixels_request(np.full((1, 8, 8, 3), 5, np.uint8))
    for name, value in fields.items():
        if name == "shape":
            del request.inputs[0].shape[:]
            request.inputs[0].shape.extend(value)
        else:
            setattr(request.inputs[0], name, value)
    return request


def changed(request: pb.ModelInferRequest, change: Any) -> pb.ModelInferRequest:
    change(request)
    return request


@pytest.mark.parametrize(
    ("request_of", "words"),
    [
        (lambda: tensor_request(shape=[2, 8, 8, 3]), ["binary data is 192 bytes", "needs 384"]),
        (lambda: changed(pixels_request(np.zeros((1, 8, 8, 3)), raw=False),
                         lambda r: r.inputs[0].contents.uint_contents.extend([1, 2, 3])), ["195 values for shape"]),
        (lambda: tensor_request(datatype="COMPLEX64"), ["unsupported datatype"]),
        (lambda: changed(tensor_request(), lambda r: r.ClearField("inputs")), ["at least one input"]),
        (lambda: changed(tensor_request(), lambda r: r.ClearField("raw_input_contents")), ["0 values for shape"]),
        (lambda: pixels_request(np.zeros((1, 4, 4, 3))), ["8, 8, 3]"]),
        (lambda: tensor_request(name="pixels"), ["unknown input 'pixels'"]),
        (lambda: tensor_request(name="x" * 20_000), ["an input's name"]),
        (lambda: changed(tensor_request(), lambda r: setattr(r.outputs[0], "name", "logits")), ["unknown output"]),
        (lambda: changed(tensor_request(), lambda r: r.raw_input_contents.append(b"\0")), ["2 raw_input_contents"]),
        (lambda: changed(tensor_request(), lambda r: setattr(r, "id", "i" * 300)), ["id must be"]),
        (lambda: tensor_request(shape=[2**31 - 1] * 8), ["images in one request"]),
        (lambda: tensor_request(shape=[1, 2**31 - 1, 2**31 - 1, 3]), ["more than"]),
        (lambda: tensor_request(shape=[2**63 - 1] * 3000), ["3000 entries"]),
        (lambda: changed(pixels_request(np.zeros((1, 8, 8, 3)), datatype="FP32"),
                         lambda r: r.raw_input_contents.__setitem__(0, np.full(192, np.nan, "<f4").tobytes())),
         ["finite"]),
    ],
    ids=["shape-vs-raw", "shape-vs-typed", "unknown-datatype", "no-inputs", "no-data", "wrong-image-shape",
         "unknown-input", "20000-char-input-name", "unknown-output", "raw-past-the-inputs", "long-id",
         "2**31-images", "overflowing-shape", "3000-dims", "nan-pixels"],
)  # fmt: skip
def test_malformed_tensors_are_invalid_argument_and_say_why(shared: Served, request_of: Any, words: list[str]) -> None:
    """Twins of test_v2_protocol.py::test_malformed_v2_bodies_are_400_with_an_error and of the
    hostile shapes of test_hostile_traffic.py; nothing reaches the model."""
    entered, decoded = shared.runtime.entered, shared.decoded()
    assert_refused(infer(shared.channel, request_of()), INVALID, *words)
    assert shared.runtime.entered == entered and shared.decoded() == decoded
    shared.good()


@pytest.mark.parametrize(
    ("parameter", "value"), [("int64_param", 0), ("int64_param", -5), ("string_param", "soon"), ("double_param", -1.0)]
)
def test_a_timeout_that_is_not_a_positive_number_is_invalid_argument(
    shared: Served, parameter: str, value: Any
) -> None:
    """Twin of test_api_fake_runtime.py::test_a_bad_timeout_header_is_a_422."""
    request = encoded_request([png(1)])
    setattr(request.parameters["timeout"], parameter, value)
    assert_refused(infer(shared.channel, request), INVALID, "timeout must be a positive number")
    shared.good()


def test_a_top_k_past_the_limit_is_refused_before_decoding_or_the_model(tmp_path: Path) -> None:
    """Twin of test_api_fake_runtime.py::test_every_protocol_ranks_alike_and_refuses_a_top_k_past_
    the_limit_before_the_model_runs."""
    with serve(tmp_path, limits=LimitSettings(max_top_k=4)) as served:
        entered = served.runtime.entered
        for raw in (True, False):
            for k in (5, 2**31 - 1):
                answer = infer(served.channel, encoded_request([png(3)], classification=k, raw=raw))
                assert_refused(answer, INVALID, "top_k must be between 1 and 4")
        assert served.decoded() == 0 and served.runtime.entered == entered
        ranking = top_classes(infer(served.channel, encoded_request([png(3)], classification=4)))
        assert ranking[0][0] == "class3" and len(ranking[0]) == 4


# --- images -------------------------------------------------------------------------------------


def test_more_images_than_one_request_may_carry_is_invalid_argument_and_nothing_is_decoded(tmp_path: Path) -> None:
    """Twins of test_admission.py::test_more_images_than_one_request_may_carry_is_413_on_every_
    protocol_and_nothing_is_decoded and ::test_a_flood_of_tiny_images_is_refused_before_any_is_decoded."""

    def every_form(count: int) -> list[pb.ModelInferRequest]:
        images = [png(i) for i in range(count)]
        pixels = np.full((count, 8, 8, 3), 1, np.uint8)
        return [encoded_request(images), encoded_request(images, raw=False), pixels_request(pixels),
                pixels_request(pixels, raw=False)]  # fmt: skip

    with serve(tmp_path, limits=LimitSettings(max_images_per_request=4)) as served:
        for request in every_form(5):
            assert_refused(infer(served.channel, request), INVALID, "5 images", "at most 4")
        assert served.decoded() == 0
        for request in every_form(4):
            assert infer(served.channel, request).ok
    with serve(tmp_path / "flood") as served:
        assert_refused(infer(served.channel, encoded_request([png(1)] * 2000)), INVALID, "at most 64")
        assert served.decoded() == 0
        served.good()


def test_a_request_larger_than_the_models_queue_gets_no_retry_hint(tmp_path: Path) -> None:
    """Twin of test_admission.py::test_a_request_larger_than_the_models_queue_is_413_not_a_retry_
    that_can_never_succeed."""
    with serve(tmp_path, batching=BatchingSettings(max_batch_size=2, max_queue_size=3)) as served:
        answer = infer(served.channel, encoded_request([png(i) for i in range(4)]))
        assert_refused(answer, INVALID, "at most 3")
        assert "retry-after" not in answer.trailing and served.decoded() == 0
        served.good()


def broken_images(photo: bytes) -> dict[str, bytes]:
    """The photo truncated or corrupted in every accepted format, and things that are no image."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")

    def encoded(fmt: str) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        return buffer.getvalue()

    flipped = bytearray(encoded("PNG"))
    flipped[200:260] = b"\xff" * 60
    return {
        "truncated.jpg": encoded("JPEG")[:3000],
        "flipped.png": bytes(flipped),
        "truncated.webp": encoded("WEBP")[:2000],
        "truncated.tiff": encoded("TIFF")[:5000],
        "truncated.bmp": encoded("BMP")[:5000],
        "truncated.gif": encoded("GIF")[:3000],
        "text": b"not an image",
        "empty": b"",
    }


def test_bad_images_are_invalid_argument_and_withdraw_their_siblings(
    tmp_path: Path, photo_bytes: dict[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """Twins of test_hostile_traffic.py::test_a_batch_with_broken_files_of_every_format_is_answered_
    per_image (v2 is all or nothing: the request fails), test_admission.py::test_a_bad_image_
    withdraws_its_siblings_decodes, and of an image past the pixel limit (413)."""
    limits = LimitSettings(max_image_pixels=1600 * 1600)  # heavy_png's size
    with serve(tmp_path, limits=limits, decode_threads=1) as served:
        for name, data in broken_images(photo_bytes["chelsea"]).items():
            answer = infer(served.channel, encoded_request([png(1), data, png(2)]))
            assert_refused(answer, INVALID)
            assert "image" in answer.details, (name, answer)
        big = io.BytesIO()
        Image.new("RGB", (1601, 1600)).save(big, format="PNG")
        assert_refused(infer(served.channel, encoded_request([big.getvalue()])), INVALID, "pixels")
        before = served.decoded()
        heavy = heavy_png(0)
        assert_refused(infer(served.channel, encoded_request([b"not an image", *[heavy] * 20])), INVALID)
        assert served.decoded() - before <= 3  # the bad one, and what the decode thread had started
        served.good()
    assert not [r for r in caplog.records if r.exc_info or "\n" in r.getMessage()]


# --- access ---------------------------------------------------------------------------------------


def keys_file(tmp_path: Path, alice: str = "") -> Path:
    path = tmp_path / "keys.txt"
    path.write_text(f"alice {digest(ALICE)} {alice}\nbob {digest(BOB)}\n")
    return path


REPOSITORY = [
    ("RepositoryIndex", pb.RepositoryIndexRequest()),
    ("RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=MODEL)),
    ("RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=MODEL)),
]


def test_the_repository_api_is_permission_denied_without_an_admin_token(tmp_path: Path) -> None:
    """Twin of test_access_control.py::test_the_repository_api_is_closed_without_an_admin_token."""
    with serve(tmp_path) as served:
        for method, request in REPOSITORY:
            answer = unary(served.channel, method, request, [("authorization", "Bearer anything")])
            assert_refused(answer, grpc.StatusCode.PERMISSION_DENIED, "IMGSERVE_ADMIN_TOKEN")
        served.good()  # the model was not unloaded


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {ADMIN}", "Bearer", ADMIN])
def test_the_repository_api_needs_the_admin_token(shared: Served, authorization: str | None) -> None:
    """Twin of test_access_control.py::test_unload_needs_the_admin_token."""
    metadata = [("authorization", authorization)] if authorization else []
    for method, request in REPOSITORY:
        answer = unary(shared.channel, method, request, metadata)
        assert_refused(answer, grpc.StatusCode.UNAUTHENTICATED)
        assert ADMIN not in answer.details
    shared.good()  # the model was not unloaded


def test_the_admin_token_opens_the_repository_api(tmp_path: Path) -> None:
    """The rest of test_access_control.py::test_unload_needs_the_admin_token."""
    with serve(tmp_path, admin_token=ADMIN) as served:
        admin = [("authorization", f"Bearer {ADMIN}")]
        index = unary(served.channel, "RepositoryIndex", pb.RepositoryIndexRequest(), admin)
        assert [m.name for m in pb.RepositoryIndexResponse.FromString(index.body).models] == [MODEL]
        assert unary(served.channel, "RepositoryModelUnload", REPOSITORY[2][1], admin).ok
        assert_refused(infer(served.channel, encoded_request([png(1)])), NOT_FOUND)
        assert unary(served.channel, "RepositoryModelLoad", REPOSITORY[1][1], admin).ok
        served.good()


def test_loading_a_model_without_a_name_is_refused(shared: Served) -> None:
    admin = [("authorization", f"Bearer {ADMIN}")]
    assert_refused(
        unary(shared.channel, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name="nope"), admin),
        NOT_FOUND,
    )
    answer = unary(shared.channel, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=""), admin)
    shared.good()
    assert answer.code in (INVALID, NOT_FOUND), answer


def test_repository_errors_quote_at_most_100_characters_of_the_name(shared: Served) -> None:
    admin = [("authorization", f"Bearer {ADMIN}")]
    name = "n" * 7000
    answers = [
        unary(shared.channel, "RepositoryModelLoad", pb.RepositoryModelLoadRequest(model_name=name), admin),
        unary(shared.channel, "RepositoryModelUnload", pb.RepositoryModelUnloadRequest(model_name=name), admin),
        infer(shared.channel, encoded_request([png(1)], model=name)),
    ]
    shared.good()
    for answer in answers:
        assert answer.code is NOT_FOUND, answer
        assert max(len(run) for run in re.findall("n+", answer.details)) <= MAX_ECHO_CHARS, answer


def test_with_api_keys_every_call_but_the_probes_needs_a_known_key(tmp_path: Path) -> None:
    """Twins of test_access_control.py::test_with_api_keys_inference_needs_a_known_key_and_probes_
    stay_open and ::test_a_missing_keys_file_refuses_every_key."""
    with serve(tmp_path, api_keys_file=keys_file(tmp_path)) as served:
        ch, request = served.channel, encoded_request([png(1)])
        assert_refused(infer(ch, request), grpc.StatusCode.UNAUTHENTICATED, "no API key")
        assert_refused(infer(ch, request, [("x-api-key", "guess")]), grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        assert_refused(unary(ch, "ModelMetadata", pb.ModelMetadataRequest(name=MODEL)), grpc.StatusCode.UNAUTHENTICATED)
        served.good(1, (("authorization", f"Bearer {ALICE}"),))
        served.good(2, (("x-api-key", BOB),))
        assert unary(ch, "ModelMetadata", pb.ModelMetadataRequest(name=MODEL), [("x-api-key", ALICE)]).ok
        for method in ("ServerLive", "ServerReady"):
            assert unary(ch, method, b"").ok, method
        check = ch.unary_unary(HEALTH_CHECK, response_deserializer=health_pb2.HealthCheckResponse.FromString)
        poll(lambda: check(b"", timeout=10).status == health_pb2.HealthCheckResponse.SERVING)  # within POLL_S
    with serve(tmp_path / "closed", api_keys_file=keys_file(tmp_path), public_probes=False) as served:
        assert_refused(unary(served.channel, "ServerLive", b""), grpc.StatusCode.UNAUTHENTICATED)
        assert unary(served.channel, "ServerLive", b"", [("x-api-key", ALICE)]).ok
    with serve(tmp_path / "absent", api_keys_file=tmp_path / "absent.txt") as served:
        answer = infer(served.channel, encoded_request([png(1)]), [("x-api-key", ALICE)])
        assert_refused(answer, grpc.StatusCode.UNAUTHENTICATED)


def test_a_rate_limit_is_resource_exhausted_with_retry_after_and_its_numbers(tmp_path: Path) -> None:
    """Twins of test_access_control.py::test_a_rate_limit_per_key_answers_429_with_its_numbers and
    ::test_without_keys_the_rate_limit_is_per_client_address."""
    with serve(tmp_path, api_keys_file=keys_file(tmp_path), rate_limit="3/minute") as served:
        alice = [("x-api-key", ALICE)]
        remaining = []
        for value in range(3):
            answer = infer(served.channel, encoded_request([png(value)]), alice)
            assert answer.ok and answer.trailing["ratelimit-limit"] == "3"
            assert answer.trailing["ratelimit-policy"] == "3;w=60"
            remaining.append(int(answer.trailing["ratelimit-remaining"]))
        assert remaining == [2, 1, 0]
        limited = infer(served.channel, encoded_request([png(4)]), alice)
        assert_refused(limited, EXHAUSTED)
        retry = int(limited.trailing["retry-after"])
        assert 1 <= retry <= 60 and limited.trailing["grpc-retry-pushback-ms"] == str(retry * 1000)
        assert limited.trailing["ratelimit-remaining"] == "0"
        served.good(5, (("x-api-key", BOB),))  # bob has his own budget
        assert unary(served.channel, "ServerLive", b"").ok  # probes are not counted
    with serve(tmp_path / "by-address", rate_limit="2/minute") as served:
        served.good(1)
        served.good(2)
        assert_refused(infer(served.channel, encoded_request([png(3)])), EXHAUSTED)
        # Unknown keys do not buy a new budget, nor do guessed admin tokens: both count against the address.
        assert_refused(infer(served.channel, encoded_request([png(3)]), [("x-api-key", "made-up")]), EXHAUSTED)
        assert_refused(unary(served.channel, "RepositoryIndex", b""), EXHAUSTED)


def test_a_client_past_its_cpu_budget_is_resource_exhausted_while_others_are_served(tmp_path: Path) -> None:
    """Twins of test_access_control.py::test_a_client_that_spends_its_cpu_budget_waits_while_others_
    are_served and ::test_work_admitted_together_does_not_all_start_on_credit_the_first_piece_spends."""
    with serve(tmp_path, api_keys_file=keys_file(tmp_path, "cpu=0.001"), decode_threads=1) as served:
        alice = [("x-api-key", ALICE)]
        assert infer(served.channel, encoded_request([heavy_png(0)]), alice).ok  # paid after the fact
        refused = infer(served.channel, encoded_request([png(1)]), alice)
        assert_refused(refused, EXHAUSTED, "CPU budget")
        assert int(refused.trailing["retry-after"]) >= 1
        served.good(2, (("x-api-key", BOB),))
    with serve(tmp_path / "together", api_keys_file=keys_file(tmp_path, "cpu=0.001"), decode_threads=1) as served:
        answer = infer(served.channel, encoded_request([heavy_png(i) for i in range(4)]), [("x-api-key", ALICE)])
        assert_refused(answer, EXHAUSTED, "CPU budget")


def test_without_docs_there_is_no_reflection(tmp_path: Path) -> None:
    """Twin of test_access_control.py::test_docs_can_be_turned_off."""
    method = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
    with serve(tmp_path, docs=False) as served:
        with pytest.raises(grpc.RpcError) as refused:
            list(served.channel.stream_stream(method)(iter([b"\x3a\x00"]), timeout=10))  # list_services
        assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
        served.good()


# --- overload, admission and deadlines -------------------------------------------------------------


def assert_retry_hint(answer: Answer) -> None:
    retry = int(answer.trailing["retry-after"])
    assert retry >= 1 and answer.trailing["grpc-retry-pushback-ms"] == str(retry * 1000), answer


@pytest.mark.usefixtures("split_models")  # the model behind the owner's protocol too
def test_a_full_queue_is_unavailable_with_a_retry_hint_and_the_rest_are_served(tmp_path: Path) -> None:
    """Twin of test_api_fake_runtime.py::test_full_queue_answers_429_with_retry_after_and_serves_the_rest."""
    with serve(tmp_path, batching=BatchingSettings(max_batch_size=1, max_queue_size=2)) as served:
        blocked = start_blocking_call(served)
        queued = [in_background(infer, served.channel, encoded_request([png(v)])) for v in (2, 3)]
        poll(lambda: served.queue_depth() == 2)
        rejected = infer(served.channel, encoded_request([png(4)]))
        assert_refused(rejected, UNAVAILABLE, "overloaded")
        assert_retry_hint(rejected)
        served.runtime.gate.set()
        answers = [f.result(timeout=30) for f in (blocked, *queued)]
        assert [top_classes(a) for a in answers] == [[["class1"]], [["class2"]], [["class3"]]]
        assert served.model_sample("imgserve_dropped_images_total", reason="rejected") == 1


@pytest.mark.parametrize("budget", ["requests", "images", "body bytes"])
def test_budgets_in_progress_are_unavailable_with_a_retry_hint_until_freed(tmp_path: Path, budget: str) -> None:
    """Twins of test_api_fake_runtime.py::test_requests_beyond_the_in_progress_limit_get_429_before_
    decoding, test_admission.py::test_images_in_progress_are_bounded_across_requests and
    ::test_bytes_of_bodies_in_flight_are_bounded_before_the_body_is_read."""
    limits = {
        "requests": LimitSettings(max_requests_in_progress=1),
        "images": LimitSettings(max_images_in_progress=2, max_images_per_request=2),
        "body bytes": LimitSettings(max_body_bytes=4000, max_body_bytes_in_flight=5000),
    }[budget]
    words = {"requests": "requests in progress", "images": "images in progress", "body bytes": "bytes of request"}
    with serve(tmp_path, limits=limits, batching=BatchingSettings(max_batch_size=1)) as served:
        served.runtime.gate.clear()
        entered = served.runtime.entered
        # Holds the whole budget: one request, two images, or 3,000 of 5,000 bytes.
        holder = encoded_request([png(1), png(1)] if budget == "images" else [png(1) + b"\0" * 2800])
        held = in_background(infer, served.channel, holder)
        poll(lambda: served.runtime.entered == entered + 1)
        decoded = served.decoded()
        refused = infer(served.channel, encoded_request([png(2) + b"\0" * 2800]))
        assert_refused(refused, UNAVAILABLE, words[budget])
        assert_retry_hint(refused)
        assert served.decoded() == decoded  # refused before any decoding
        served.runtime.gate.set()
        assert held.result(timeout=30).ok
        served.good()


@pytest.mark.usefixtures("split_models")  # the model behind the owner's protocol too
@pytest.mark.parametrize("deadline_from", ["server", "timeout parameter", "call deadline"])
def test_a_deadline_that_passes_in_the_queue_is_deadline_exceeded_and_never_runs(
    tmp_path: Path, deadline_from: str
) -> None:
    """Twin of test_api_fake_runtime.py::test_request_whose_deadline_passes_in_the_queue_gets_504_
    and_never_runs, with the client's deadline as the v2 timeout parameter or the call's own."""
    limits = LimitSettings(request_timeout_s=0.3 if deadline_from == "server" else 10.0)
    with serve(tmp_path, limits=limits, batching=BatchingSettings(max_batch_size=1)) as served:
        blocked = start_blocking_call(served)
        late = encoded_request([png(7)], timeout_us=300_000 if deadline_from == "timeout parameter" else None)
        timeout = 0.3 if deadline_from == "call deadline" else 30
        answer = in_background(infer, served.channel, late, timeout=timeout)
        poll(lambda: served.queue_depth() == 1)
        time.sleep(0.5)  # the queued request's 0.3 s pass while the model is busy
        served.runtime.gate.set()
        assert blocked.result(timeout=30).ok
        assert_refused(answer.result(timeout=30), DEADLINE)
        # Expired in the queue; or, when the call's own deadline ended the call, abandoned by it.
        reasons = ("expired", "abandoned") if deadline_from == "call deadline" else ("expired",)
        poll(lambda: sum(served.model_sample("imgserve_dropped_images_total", reason=r) for r in reasons) == 1)
        assert 7 not in served.runtime.seen  # it never ran
        served.good()


def test_a_timeout_too_short_to_be_met_is_refused_with_the_deadline_named(shared: Served) -> None:
    """Twin of test_v2_protocol.py::test_the_timeout_parameter_shortens_the_deadline (429 or 504)."""
    answer = infer(shared.channel, encoded_request([png(7)], timeout_us=1))
    assert answer.code in (DEADLINE, UNAVAILABLE) and "deadline" in answer.details, answer
    shared.good()


@pytest.mark.usefixtures("split_models")  # the model behind the owner's protocol too
def test_before_warm_up_ends_inference_is_unavailable_with_a_retry_hint(tmp_path: Path) -> None:
    """Twin of test_api_fake_runtime.py::test_not_ready_until_warm_up_finishes."""
    runtime = GatedRuntime()
    runtime.gate.clear()  # warm-up blocks
    with serve(tmp_path, runtime, ready=False) as served:
        early = infer(served.channel, encoded_request([png(1)]))
        assert early.code is UNAVAILABLE and "retry-after" in early.trailing, early
        assert not pb.ServerReadyResponse.FromString(unary(served.channel, "ServerReady", b"").body).ready
        check = served.channel.unary_unary(
            HEALTH_CHECK, response_deserializer=health_pb2.HealthCheckResponse.FromString
        )
        assert check(b"", timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
        runtime.gate.set()
        poll(served.ready)
        served.good()


@pytest.mark.usefixtures("split_models")  # the model behind the owner's protocol too
def test_a_poisoned_image_fails_alone_and_its_batch_mates_are_answered(tmp_path: Path) -> None:
    """Twin of test_api_fake_runtime.py::test_a_poisoned_image_fails_alone_and_its_batch_mates_are_
    answered: the model's own failure is the one INTERNAL, and it is that image's alone."""
    with serve(tmp_path, GatedRuntime(poison=13), faults=True, batching=BatchingSettings(max_batch_size=8)) as served:
        blocked = start_blocking_call(served)
        values = [1, 2, 13, 4, 5]
        batch = [in_background(infer, served.channel, encoded_request([png(v)])) for v in values]
        poll(lambda: served.queue_depth() == len(values))
        served.runtime.gate.set()
        answers = [f.result(timeout=30) for f in batch]
        assert [a.code for a in answers] == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.INTERNAL] + [
            grpc.StatusCode.OK
        ] * 2
        assert "the model failed" in answers[2].details and blocked.result(timeout=30).ok
        served.good()


@pytest.mark.usefixtures("split_models")  # the model behind the owner's protocol too
def test_a_call_cancelled_while_queued_never_reaches_the_model(tmp_path: Path) -> None:
    """Twin of test_api_fake_runtime.py::test_a_client_that_disconnects_while_queued_never_reaches_
    the_model."""
    with serve(tmp_path, batching=BatchingSettings(max_batch_size=4)) as served:
        blocked = start_blocking_call(served)
        method = served.channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
        call = method.future(iter([encoded_request([png(7)]).SerializeToString()]), timeout=30)
        poll(lambda: served.queue_depth() == 1)
        assert call.cancel()
        poll(lambda: served.calls_answered(grpc.StatusCode.CANCELLED) == 1)
        served.runtime.gate.set()
        assert blocked.result(timeout=30).ok
        poll(lambda: served.model_sample("imgserve_dropped_images_total", reason="abandoned") == 1)
        assert 7 not in served.runtime.seen
        served.good()


# --- hostile traffic and the mutation fuzz -----------------------------------------------------------


def typed_pixels_message(shape: list[int], last: int) -> bytes:
    """A ModelInferRequest of typed UINT8 values of ``shape``, all 7 but the last, written on the
    wire directly (building millions of them through protobuf takes seconds)."""
    values = Field(4, LENGTH, b"\x07" * (math.prod(shape) - 1) + varint(last))  # uint_contents, packed
    tensor = [Field(1, LENGTH, b"images"), Field(2, LENGTH, b"UINT8"), Field(3, LENGTH, shape, "packed"),
              Field(5, LENGTH, [values], "contents")]  # fmt: skip
    return serialize([Field(1, LENGTH, MODEL.encode()), Field(5, LENGTH, tensor, "input")])


def test_hostile_messages_are_invalid_argument_and_probes_answer_throughout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twin of test_hostile_traffic.py::test_hostile_bodies_are_client_errors_and_health_answers_
    throughout, on a fake model of 224x224 images (the real model's size): 3,000 dimensions, an
    overflowing shape, 2,000 tiny PNGs, and 9.6 million typed pixels (9.6 MB) with one value out
    of range at the very end, each twice at once, while the probes are timed."""
    write_model(tmp_path, MODEL, "fake", image_size=224, resize_shorter_side=224, classes=10)
    runtime = GatedRuntime()
    settings = Settings(model_repository=tmp_path, default_model=MODEL, host="127.0.0.1", grpc_port=free_port())
    app = create_app(settings, runtime_factory=lambda manifest, path, options: runtime)
    hostile = {
        "3000 dims": tensor_request(shape=[2**63 - 1] * 3000).SerializeToString(),
        "overflowing shape": tensor_request(shape=[64, 2**31 - 1, 2**31 - 1, 3]).SerializeToString(),
        "2000 tiny PNGs": encoded_request([png(1)] * 2000).SerializeToString(),
        "9.6 MB of typed pixels": typed_pixels_message([64, 224, 224, 3], last=300),
    }
    with live_server(app, grpc=settings) as url, grpc.insecure_channel(f"127.0.0.1:{settings.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        with ThreadPoolExecutor(max_workers=4) as pool, httpx.Client(base_url=url, timeout=30) as http:
            answers = {(what, i): pool.submit(infer, channel, data, timeout=120) for what, data in hostile.items()
                       for i in range(2)}  # fmt: skip
            probe_seconds = []
            for _ in range(600):  # bounded: at most ~60 s of polling
                started = time.perf_counter()
                live(b"", timeout=30)
                assert http.get("/health").status_code == 200
                probe_seconds.append(time.perf_counter() - started)
                if all(f.done() for f in answers.values()):
                    break
                time.sleep(0.1)
        for future in answers.values():
            assert_refused(future.result(), INVALID)
        assert "values outside the range of UINT8" in answers["9.6 MB of typed pixels", 0].result().details
        assert max(probe_seconds) < 2.0, sorted(probe_seconds)[-5:]
        image = pixels_request(np.full((1, 224, 224, 3), 3, np.uint8))
        assert top_classes(infer(channel, image)) == [["class3"]]
    # Client errors are not the server's: at most one line each, never a traceback.
    assert not [r for r in caplog.records if r.exc_info or "\n" in r.getMessage()]


def many_typed_elements(raw_too: bool) -> bytes:
    """18 MB of typed BYTES elements, nine million empty ones (two bytes each on the wire), with or
    without a raw content beside them: refused once parsed ("data in both contents and
    raw_input_contents", or "9000000 BYTES elements" for a shape of one), but protobuf's parse of
    it alone takes 0.7 s of CPU and ~370 MB, holding the GIL."""
    tensor = [Field(1, LENGTH, b"images"), Field(2, LENGTH, b"BYTES"), Field(3, LENGTH, [1], "packed"),
              Field(5, LENGTH, b"\x42\x00" * 9_000_000)]  # fmt: skip
    raw = [Field(7, LENGTH, bytes(4))] if raw_too else []
    return serialize([Field(1, LENGTH, MODEL.encode()), Field(5, LENGTH, tensor, "input"), *raw])


def test_millions_of_typed_elements_do_not_stall_the_server(tmp_path: Path) -> None:
    """Twin of test_hostile_traffic.py::test_hostile_bodies_are_client_errors_and_health_answers_
    throughout for what the HTTP side parses in a worker process (a megabyte or more of numbers):
    twelve 19.8 MB JSON bodies at once keep the probes within about 0.5 s (measured); five 18 MB
    messages of typed elements with a raw content beside must keep them within 1 s. (Without the
    raw content the parse runs on a pool thread instead, and stalls the loop almost as much.)"""
    with serve(tmp_path) as served:
        messages = [many_typed_elements(raw_too=True)] * 5
        live = served.channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        probe_seconds = []
        with ThreadPoolExecutor(max_workers=len(messages)) as pool, httpx.Client(base_url=served.url) as http:
            answers = [pool.submit(infer, served.channel, message, timeout=120) for message in messages]
            for _ in range(1200):  # bounded: at most ~2 minutes of probing
                started = time.perf_counter()
                live(b"", timeout=60)
                assert http.get("/health", timeout=60).status_code == 200
                probe_seconds.append(time.perf_counter() - started)
                if all(answer.done() for answer in answers):
                    break
                time.sleep(0.02)
        for answer in answers:
            assert_refused(answer.result(), INVALID)
        served.good()
        assert max(probe_seconds) < 1.0, sorted(probe_seconds)[-3:]


MUTANTS = int(os.environ.get("IMGSERVE_FUZZ_MUTANTS", "3"))
BASE_SEED = os.environ.get("IMGSERVE_FUZZ_SEED", "0")


def seed_requests() -> dict[str, pb.ModelInferRequest]:
    """Real requests to mutate: photos encoded as JPEG (and one PNG) as BYTES, raw and typed, and
    pixel tensors raw and typed."""
    photos = image_mutations.corpus()
    jpeg = photos["jpeg-baseline"]
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 8, 8, 3)).astype(np.uint8)
    return {
        "jpeg-raw": encoded_request([jpeg["coffee"], jpeg["chelsea"]], classification=3, timeout_us=10**7),
        "jpeg-typed": encoded_request([photos["jpeg-progressive-exif"]["rocket"]], raw=False),
        "png-raw": encoded_request([photos["png-rgba-exif"]["grace_hopper"]]),
        "uint8-raw": pixels_request(pixels),
        "uint8-typed": pixels_request(pixels[:1], raw=False),
        "fp32-raw": pixels_request(pixels[:1], datatype="FP32"),
    }


@pytest.mark.filterwarnings("ignore:::PIL")  # Pillow warns about odd files, as in the decode fuzzer
def test_mutated_requests_get_no_server_fault_and_the_server_keeps_answering(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Mutants of real requests (bit flips, truncations and splices of the message; numbers,
    lengths and strings changed inside it with its framing kept; its photos mutated as the decode
    fuzzer mutates them) sent to the server, while a client sends good requests beside them: every
    mutant is answered OK or with a client's status, never INTERNAL or UNKNOWN; every good
    request succeeds. Replay a failure with ``bad_input.mutate(seed_message, seeds, seed)``."""
    seeds = {name: request.SerializeToString() for name, request in seed_requests().items()}
    others = list(seeds.values())
    with serve(tmp_path, batching=BatchingSettings(max_batch_size=4)) as served:
        stop, good_answers = threading.Event(), []

        def good_client() -> None:
            value = 0
            while not stop.is_set() and len(good_answers) < 10_000:
                value += 1
                good_answers.append((value, infer(served.channel, encoded_request([png(value % 10)]))))
                time.sleep(0.01)

        neighbour = in_background(good_client)
        codes: Counter[str] = Counter()
        faults = []
        try:
            for name, message in seeds.items():
                for n in range(25 * MUTANTS):
                    seed = f"{BASE_SEED}:{name}:{n}"
                    mutant = mutate(message, others, seed)
                    answer = infer(served.channel, mutant.data)
                    codes[answer.code.name] += 1
                    if answer.code in SERVER_FAULTS:
                        faults.append((name, seed, mutant.what, answer.code.name, answer.details))
                assert unary(served.channel, "ServerLive", b"").ok
        finally:
            stop.set()
            neighbour.result(timeout=60)
        assert not faults, faults[:5]
        assert codes["OK"] and codes["INVALID_ARGUMENT"], codes  # the mutants reach both outcomes
        assert good_answers and all(top_classes(a) == [[f"class{v % 10}"]] for v, a in good_answers)
        served.good()
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records][:5]


def test_through_a_worker_process_bad_requests_get_no_server_fault(tmp_path: Path) -> None:
    """The same contract across the process boundary: ``imgserve serve --workers 1`` (gRPC in the
    front-end worker) over a simulated model in the model owner's process: a sample of the bad
    requests above and of the mutants, then good requests, each on a fresh connection."""
    write_model(tmp_path, MODEL, "simulated", image_size=8, resize_shorter_side=8, classes=10)
    limits = LimitSettings(max_images_per_request=4, max_body_bytes=100_000, max_body_bytes_in_flight=1_000_000)
    settings = Settings(model_repository=tmp_path, default_model=MODEL, limits=limits)
    seeds = {name: request.SerializeToString() for name, request in seed_requests().items()}
    with served_with_grpc(settings, 1) as (url, target), grpc.insecure_channel(target) as channel:
        bad = [
            (b"\xff\xff\xff", INVALID),
            (encoded_request([png(1)], model="no_such_model"), NOT_FOUND),
            (encoded_request([png(i) for i in range(5)]), INVALID),
            (encoded_request([b"not an image"]), INVALID),
            (tensor_request(shape=[2**31 - 1] * 8), INVALID),
            (encoded_request([png(1) + b"\0" * 100_000]), EXHAUSTED),
            (typed_pixels_message([2, 8, 8, 3], last=300), INVALID),
        ]
        for message, code in bad:
            assert infer(channel, message).code is code, message[:40] if isinstance(message, bytes) else message
        faults = []
        for name, message in seeds.items():
            for n in range(10):
                mutant = mutate(message, list(seeds.values()), f"{BASE_SEED}:workers:{name}:{n}")
                answer = infer(channel, mutant.data)
                if answer.code in SERVER_FAULTS:
                    faults.append((name, n, mutant.what, answer.code.name, answer.details))
        assert not faults, faults[:5]
        for value in range(4):
            with grpc.insecure_channel(target) as fresh:
                assert top_classes(infer(fresh, encoded_request([png(value)]))) == [[f"class{value}"]]
        metrics = httpx.get(f"{url}/metrics", timeout=30).text
        assert 'code="INVALID_ARGUMENT"' in metrics  # the worker's gRPC calls are counted here
        assert not re.search(r'imgserve_grpc_requests_total\{[^}]*code="(INTERNAL|UNKNOWN)"', metrics)
