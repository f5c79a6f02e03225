"""The Open Inference Protocol over gRPC, exercised by NVIDIA's own client (tritonclient.grpc),
on the real model, in one process and behind `--workers 2`; answers compared with HTTP v2's."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_aio
import tritonclient.http as triton_http
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from tritonclient.utils import InferenceServerException

from loadtests.in_process import GENEROUS_LIMITS
from model_contract.imaging import image_to_tensor
from model_contract.preprocess import PreprocessSpec
from server.settings import BatchingSettings, Settings
from tests.conftest import PHOTOS
from tests.served import served_with_grpc

pytestmark = pytest.mark.e2e

MODEL = "efficientnet_lite0"
ESPRESSO = 967


@pytest.fixture(scope="module", params=["in-process", 2])
def server(request: pytest.FixtureRequest, model_repository: Path) -> Iterator[tuple[str, str]]:
    settings = Settings(model_repository=model_repository, batching=BatchingSettings(max_batch_size=4))
    with served_with_grpc(settings, request.param) as urls:
        yield urls


@pytest.fixture(scope="module")
def client(server: tuple[str, str]) -> Iterator[triton_grpc.InferenceServerClient]:
    grpc_client = triton_grpc.InferenceServerClient(server[1])
    yield grpc_client
    grpc_client.close()


@pytest.fixture(scope="module")
def http_client(server: tuple[str, str]) -> Iterator[triton_http.InferenceServerClient]:
    http = triton_http.InferenceServerClient(server[0].removeprefix("http://"))
    yield http
    http.close()


@pytest.fixture(scope="module")
def coffee_and_cat(photo_bytes: dict[str, bytes]) -> np.ndarray:
    spec = PreprocessSpec(resize_shorter_side=256, crop_size=224)
    return np.stack([image_to_tensor(photo_bytes[name], spec, GENEROUS_LIMITS) for name in ("coffee", "chelsea")])


@pytest.fixture(scope="module")
def encoded_photos(photo_bytes: dict[str, bytes]) -> np.ndarray:
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(photo_bytes["coffee"])).convert("RGB").save(jpeg, format="JPEG", quality=90)
    return np.array([jpeg.getvalue(), photo_bytes["cameraman"]], dtype=np.object_)


def uint8_input(module: Any, pixels: np.ndarray) -> Any:
    tensor = module.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    return tensor


def bytes_input(module: Any, encoded: np.ndarray) -> Any:
    tensor = module.InferInput("images", [len(encoded)], "BYTES")
    tensor.set_data_from_numpy(encoded)
    return tensor


def test_health_metadata_and_readiness(client: triton_grpc.InferenceServerClient, server: tuple[str, str]) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("no_such_model") and not client.is_model_ready(MODEL, "7")
    metadata = client.get_server_metadata()
    assert metadata.name == "imgserve"
    assert {"binary_tensor_data", "classification", "model_configuration", "statistics"} <= set(metadata.extensions)
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["versions"] == ["1"] and model["platform"] == "tensorflow_savedmodel"
    assert model["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": ["-1", "224", "224", "3"]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "1000"]}]


def test_grpc_health_checking_and_reflection(server: tuple[str, str]) -> None:
    """What a Kubernetes gRPC probe and grpcurl ask."""
    with grpc.insecure_channel(server[1]) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as unknown:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        asks = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="inference.GRPCInferenceService"),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(asks), timeout=10))
        names = {s.name for s in listed.list_services_response.service}
        assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names
        assert described.file_descriptor_response.file_descriptor_proto  # the .proto, for grpcurl


def test_model_config_over_grpc_and_http_is_one_configuration(
    client: triton_grpc.InferenceServerClient, http_client: triton_http.InferenceServerClient
) -> None:
    config = client.get_model_config(MODEL).config
    assert (config.name, config.max_batch_size, config.platform) == (MODEL, 4, "tensorflow_savedmodel")
    (images,) = config.input
    assert (images.name, list(images.dims), images.data_type) == ("images", [224, 224, 3], 2)  # TYPE_UINT8
    assert list(config.output[0].dims) == [1000]
    queue = config.dynamic_batching.default_queue_policy
    assert (queue.max_queue_size, queue.default_timeout_microseconds) == (256, 10_000_000)
    as_http = json_format.MessageToDict(config, preserving_proto_field_name=True, use_integers_for_enums=False)
    over_http = http_client.get_model_config(MODEL)
    # protobuf's JSON writes 64-bit integers as strings; HTTP writes numbers.
    assert json_format.ParseDict(over_http, type(config)()) == config, (as_http, over_http)


def test_encoded_images_as_bytes_with_the_classification_extension(
    client: triton_grpc.InferenceServerClient, encoded_photos: np.ndarray
) -> None:
    output = triton_grpc.InferRequestedOutput("probabilities", class_count=3)
    classes = client.infer(MODEL, [bytes_input(triton_grpc, encoded_photos)], outputs=[output]).as_numpy(
        "probabilities"
    )
    assert classes.shape == (2, 3)
    score, index, label = classes[0][0].decode().split(":")
    assert (int(index), label) == (ESPRESSO, "espresso") and float(score) > 0.5
    assert int(classes[1][0].decode().split(":")[1]) in PHOTOS["cameraman"]["top1"]  # type: ignore[operator]


def test_answers_equal_http_v2_for_the_same_photos(
    client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
    coffee_and_cat: np.ndarray,
    encoded_photos: np.ndarray,
) -> None:
    over_grpc = client.infer(MODEL, [uint8_input(triton_grpc, coffee_and_cat)], request_id="r1")
    over_http = http_client.infer(MODEL, [uint8_input(triton_http, coffee_and_cat)])
    grpc_scores = over_grpc.as_numpy("probabilities")
    assert grpc_scores.shape == (2, 1000) and grpc_scores.dtype == np.float32
    np.testing.assert_allclose(grpc_scores, over_http.as_numpy("probabilities"), atol=1e-6)
    assert over_grpc.get_response().id == "r1"
    assert grpc_scores[0].argmax() == ESPRESSO

    top = [triton_grpc.InferRequestedOutput("probabilities", class_count=5)]
    top_http = [triton_http.InferRequestedOutput("probabilities", class_count=5)]
    grpc_top = client.infer(MODEL, [bytes_input(triton_grpc, encoded_photos)], outputs=top)
    http_top = http_client.infer(MODEL, [bytes_input(triton_http, encoded_photos)], outputs=top_http)
    grpc_classes, http_classes = grpc_top.as_numpy("probabilities"), http_top.as_numpy("probabilities")
    assert [[e.split(b":")[1] for e in row] for row in grpc_classes] == [
        [e.split(b":")[1] for e in row] for row in http_classes
    ]


def test_typed_contents_answer_alike_and_come_back_typed(server: tuple[str, str], coffee_and_cat: np.ndarray) -> None:
    """A KServe-style client that sends typed contents (no raw bytes) gets typed contents back."""
    from server.grpc_api import inference_pb2 as pb

    request = pb.ModelInferRequest(model_name=MODEL)
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=[1, 224, 224, 3])
    tensor.contents.uint_contents.extend(coffee_and_cat[0].ravel().tolist())
    with grpc.insecure_channel(server[1], options=[("grpc.max_send_message_length", -1)]) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = infer(request, timeout=60)
    assert not response.raw_output_contents
    scores = np.array(response.outputs[0].contents.fp32_contents)
    assert scores.shape == (1000,) and scores.argmax() == ESPRESSO


def test_statistics_count_what_ran_over_both_protocols(
    client: triton_grpc.InferenceServerClient,
    http_client: triton_http.InferenceServerClient,
    coffee_and_cat: np.ndarray,
) -> None:
    def stats() -> dict[str, Any]:
        (entry,) = client.get_inference_statistics(MODEL, as_json=True)["model_stats"]
        return entry  # type: ignore[no-any-return]

    before = stats()
    for _ in range(3):
        client.infer(MODEL, [uint8_input(triton_grpc, coffee_and_cat)])
    with pytest.raises(InferenceServerException):
        client.infer(MODEL, [bytes_input(triton_grpc, np.array([b"not an image"], dtype=np.object_))])
    after = stats()

    def count(entry: dict[str, Any], *path: str) -> int:
        for key in path:
            entry = entry.get(key, {})
        return int(entry or 0)  # type: ignore[call-overload]

    assert (
        count(after, "inference_stats", "success", "count") - count(before, "inference_stats", "success", "count") == 3
    )
    assert count(after, "inference_stats", "fail", "count") - count(before, "inference_stats", "fail", "count") == 1
    assert count(after, "inference_count") - count(before, "inference_count") == 6  # 3 requests of 2 images
    assert count(after, "execution_count") > count(before, "execution_count")
    assert count(after, "inference_stats", "compute_infer", "ns") > count(
        before, "inference_stats", "compute_infer", "ns"
    )
    assert sum(int(b["batch_size"]) * int(b["compute_infer"]["count"]) for b in after["batch_stats"]) == count(
        after, "inference_count"
    )
    over_http = http_client.get_inference_statistics(MODEL)["model_stats"][0]
    assert over_http["inference_count"] == count(after, "inference_count")
    assert over_http["inference_stats"]["success"]["count"] == count(after, "inference_stats", "success", "count")


def test_errors_map_to_status_codes(
    client: triton_grpc.InferenceServerClient, server: tuple[str, str], coffee_and_cat: np.ndarray
) -> None:
    def status_of(call: Any) -> str | None:
        with pytest.raises(InferenceServerException) as refused:
            call()
        return refused.value.status()

    wrong_shape = uint8_input(triton_grpc, np.zeros((1, 8, 8, 3), np.uint8))
    assert status_of(lambda: client.infer(MODEL, [wrong_shape])) == "StatusCode.INVALID_ARGUMENT"
    assert status_of(lambda: client.infer("no_such_model", [wrong_shape])) == "StatusCode.NOT_FOUND"
    assert status_of(lambda: client.get_model_config(MODEL, "7")) == "StatusCode.NOT_FOUND"
    broken = bytes_input(triton_grpc, np.array([b"GIF89a broken"], dtype=np.object_))
    assert status_of(lambda: client.infer(MODEL, [broken])) == "StatusCode.INVALID_ARGUMENT"
    # The repository API is closed without an admin token, over gRPC as over HTTP.
    assert status_of(lambda: client.unload_model(MODEL)) == "StatusCode.PERMISSION_DENIED"
    assert httpx.post(f"{server[0]}/v2/repository/models/{MODEL}/unload").status_code == 403
    assert client.is_model_ready(MODEL)


def test_concurrent_clients_get_their_own_answers(server: tuple[str, str], coffee_and_cat: np.ndarray) -> None:
    async def scenario() -> list[int]:
        clients = [triton_aio.InferenceServerClient(server[1]) for _ in range(4)]
        try:
            calls = [
                clients[i % 4].infer(
                    MODEL, [uint8_input(triton_aio, coffee_and_cat[i % 2 : i % 2 + 1])], request_id=str(i)
                )
                for i in range(16)
            ]
            results = await asyncio.gather(*calls)
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        assert [r.get_response().id for r in results] == [str(i) for i in range(16)]
        return [int(r.as_numpy("probabilities")[0].argmax()) for r in results]

    tops = asyncio.run(scenario())
    assert tops[0::2] == [ESPRESSO] * 8
    assert all(t in PHOTOS["chelsea"]["top1"] for t in tops[1::2])  # type: ignore[operator]


def test_a_deadline_too_short_for_the_model_ends_the_call(
    client: triton_grpc.InferenceServerClient, coffee_and_cat: np.ndarray
) -> None:
    """DEADLINE_EXCEEDED (the client's clock or the server's, which takes the call's deadline
    for the request's), or, once the server's latency model knows the model's speed, refused at
    once as unable to make it (UNAVAILABLE, as HTTP's 429). Never run, never an error of ours."""
    with pytest.raises(InferenceServerException) as expired:
        client.infer(MODEL, [uint8_input(triton_grpc, coffee_and_cat)], client_timeout=0.0005)
    status, message = expired.value.status(), expired.value.message()
    assert status == "StatusCode.DEADLINE_EXCEEDED" or (status == "StatusCode.UNAVAILABLE" and "deadline" in message)
    assert client.infer(MODEL, [uint8_input(triton_grpc, coffee_and_cat)]).as_numpy("probabilities").shape == (2, 1000)
