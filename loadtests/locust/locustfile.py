"""imgserve user scenarios for Locust (FastHttpUser: low client overhead).

Pick users by class name, and a load shape with ``IMGSERVE_SHAPE`` (steady, burst,
overload). Without a shape, ``-u`` and ``-r`` drive the load as usual. Each scenario
headless, writing CSVs (loopback only):

    locust -f loadtests/locust/locustfile.py --headless -H http://127.0.0.1:8000 \\
        -u 32 -r 8 -t 60s --csv results/single SingleImageUser
    locust -f loadtests/locust/locustfile.py --headless -H http://127.0.0.1:8000 \\
        -u 8 -r 8 -t 60s --csv results/batch BatchUploadUser
    locust -f loadtests/locust/locustfile.py --headless -H http://127.0.0.1:8000 \\
        -u 32 -r 8 -t 60s --csv results/mixed MixedTrafficUser
    IMGSERVE_SHAPE=burst locust -f loadtests/locust/locustfile.py --headless \\
        -H http://127.0.0.1:8000 --csv results/burst MixedTrafficUser
    IMGSERVE_SHAPE=overload locust -f loadtests/locust/locustfile.py --headless \\
        -H http://127.0.0.1:8000 --csv results/overload SingleImageUser
    IMGSERVE_GRPC_TARGET=127.0.0.1:8001 locust -f loadtests/locust/locustfile.py --headless \\
        -u 32 -r 8 -t 60s --csv results/grpc GrpcTensorUser

429 and 503 answers are expected under the overload shape. They count as successes when they
carry Retry-After, because shedding load is the server doing its job. Anything else is a failure.
Over gRPC the same goes for UNAVAILABLE and RESOURCE_EXHAUSTED with ``retry-after`` in the
trailing metadata.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import gevent
import grpc
import grpc.experimental.gevent
from locust import FastHttpUser, LoadTestShape, User, between, events, task
from locust.env import Environment

from loadtests.grpc_load import CHANNEL_OPTIONS, MODEL_INFER, answer_problem, is_shed
from loadtests.locust.payloads import SIZE_MIX, mixed_photo, photos, preprocessed_photos, typical_photo
from loadtests.payloads import grpc_infer_request, multipart_files, v2_binary_body

# Locust has patched the standard library for gevent by now; gRPC's own I/O must yield to
# gevent too, or each call blocks every user in this process until it is answered.
grpc.experimental.gevent.init_gevent()

SHED_STATUSES = (429, 503)
TOP_K = 5


def _prepare_payloads(environment: Environment, **_: Any) -> None:
    """Encode the chosen users' payloads before the run starts: made on first use, inside the
    run, they blocked every user of the process for a second or more on a busy machine. Then
    bring gevent's clock up to date: it is read once a loop turn, and nothing has turned the loop
    since Locust started, so ``-t``'s timer, set next, would count Locust's start-up and this
    preparation as run time (a 4 s run sent requests for 1.6 s on a busy machine)."""
    for user_class in environment.user_classes:
        prepare = getattr(user_class, "prepare", None)
        if prepare is not None:
            prepare()
    gevent.get_hub().loop.update_now()


events.init.add_listener(_prepare_payloads)  # type: ignore[no-untyped-call]


def _check(response: Any) -> None:
    if response.status_code == 200:
        if "predictions" not in response.text and "results" not in response.text:
            response.failure("200 without predictions")
    elif response.status_code in SHED_STATUSES and response.headers.get("Retry-After"):
        response.success()
    else:
        response.failure(f"HTTP {response.status_code}: {response.text[:200]}")


class _ImgserveUser(FastHttpUser):
    abstract = True
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))

    def post_image(self, data: bytes, name: str) -> None:
        self._post("/v1/classify?top_k=5", data, "image/jpeg", name)

    def post_batch(self, images: list[bytes], name: str) -> None:
        body, content_type = multipart_files("files", images)
        self._post("/v1/classify/batch?top_k=1", body, content_type, name)

    def _post(self, path: str, body: bytes, content_type: str, name: str) -> None:
        with self.client.post(
            path,
            data=body,  # type: ignore[arg-type]  # bytes are sent as they are; the stub says str
            headers={"Content-Type": content_type},
            name=name,
            catch_response=True,
        ) as response:
            _check(response)


class SingleImageUser(_ImgserveUser):
    """One 640x480-class JPEG per request, as a mobile or web client sends it."""

    @staticmethod
    def prepare() -> None:
        photos(480)

    @task
    def classify(self) -> None:
        self.post_image(typical_photo(self.rng), "/v1/classify")


class BatchUploadUser(_ImgserveUser):
    """Eight photos in one multipart request to /v1/classify/batch."""

    @staticmethod
    def prepare() -> None:
        photos(480)

    @task
    def classify_batch(self) -> None:
        self.post_batch([self.rng.choice(photos(480)) for _ in range(8)], "/v1/classify/batch")


class MixedTrafficUser(_ImgserveUser):
    """Mostly single uploads of mixed sizes, now and then a small batch."""

    @staticmethod
    def prepare() -> None:
        for size, _ in SIZE_MIX:
            photos(size)

    @task(9)
    def classify(self) -> None:
        self.post_image(mixed_photo(self.rng), "/v1/classify [mixed sizes]")

    @task(1)
    def classify_batch(self) -> None:
        self.post_batch([mixed_photo(self.rng) for _ in range(4)], "/v1/classify/batch [mixed sizes]")


class V2BinaryTensorUser(_ImgserveUser):
    """Preprocessed uint8 images as Open Inference Protocol v2 binary tensors, as Triton
    clients send them: batches of 1 to 8, top-5 through the classification extension."""

    model = os.environ.get("IMGSERVE_MODEL", "efficientnet_lite0")
    prepare = staticmethod(preprocessed_photos)

    @task
    def infer(self) -> None:
        images = preprocessed_photos()
        picks = [self.rng.randrange(len(images)) for _ in range(self.rng.randint(1, 8))]
        body, headers = v2_binary_body(images[picks])
        with self.client.post(
            f"/v2/models/{self.model}/infer",
            data=body,  # type: ignore[arg-type]
            headers=headers,
            name="/v2/models/[model]/infer [binary uint8]",
            catch_response=True,
        ) as response:
            if response.status_code == 200 and response.headers.get("Inference-Header-Content-Length"):
                response.success()
            else:
                _check(response)


class GrpcTensorUser(User):
    """The same batches as ``V2BinaryTensorUser`` over gRPC (``inference.GRPCInferenceService``):
    ``ModelInfer`` with the tensor in ``raw_input_contents`` and top-5 through the
    classification parameter, as tritonclient.grpc sends them. Each user has a connection of its
    own to ``IMGSERVE_GRPC_TARGET`` (host:port, default 127.0.0.1:8001); ``-H`` is not used."""

    wait_time = between(0.0, 0.05)
    target = os.environ.get("IMGSERVE_GRPC_TARGET", "127.0.0.1:8001")
    model = os.environ.get("IMGSERVE_MODEL", "efficientnet_lite0")
    timeout_s = 60.0
    prepare = staticmethod(preprocessed_photos)

    def on_start(self) -> None:
        self.rng = random.Random(id(self))
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.infer_call = self.channel.unary_unary(MODEL_INFER, request_serializer=None, response_deserializer=None)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def infer(self) -> None:
        images = preprocessed_photos()
        picks = [self.rng.randrange(len(images)) for _ in range(self.rng.randint(1, 8))]
        request = grpc_infer_request(images[picks], self.model, top_k=TOP_K)
        outcome: bytes | grpc.RpcError
        started = time.perf_counter()
        try:
            outcome = self.infer_call(request, timeout=self.timeout_s)
        except grpc.RpcError as error:
            outcome = error
        elapsed_ms = (time.perf_counter() - started) * 1000
        exception: BaseException | None = None
        if isinstance(outcome, grpc.RpcError):
            response, exception = b"", None if is_shed(outcome) else outcome
        else:
            response, problem = outcome, answer_problem(outcome, len(picks), TOP_K)
            exception = AssertionError(f"OK with {problem}") if problem else None
        self.environment.events.request.fire(
            request_type="grpc",
            name="ModelInfer [raw uint8]",
            response_time=elapsed_ms,
            response_length=len(response),
            exception=exception,
            context={},
        )


# Load shapes: (until second, users, spawn rate) stages.
SHAPES: dict[str, tuple[tuple[float, int, float], ...]] = {
    "steady": ((60, 32, 8),),
    # Quiet, a sudden burst of eight times the clients, quiet again.
    "burst": ((20, 8, 8), (40, 64, 64), (60, 8, 64)),
    # Far more clients than the queue holds: expect 429s with Retry-After, not timeouts.
    "overload": ((10, 16, 16), (50, 400, 100), (60, 16, 100)),
}

_chosen = os.environ.get("IMGSERVE_SHAPE")
if _chosen:
    # Locust runs any LoadTestShape it finds in the locustfile (and then ignores -u, -r and
    # -t), so the class exists only when a shape is asked for.
    _stages = SHAPES[_chosen]

    class StagedShape(LoadTestShape):
        def tick(self) -> tuple[int, float] | None:
            elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
            for until, users, rate in _stages:
                if elapsed < until:
                    return users, rate
            return None
