"""Real photographs as upload payloads, the size a phone or web client typically sends."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from server.grpc_api import inference_pb2 as pb  # the protocol's messages alone: no server code

PHOTO_SOURCES = (
    ("skimage", "chelsea.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("matplotlib", "grace_hopper.jpg"),
)


def _photo_path(package: str, name: str) -> Path:
    if package == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data" / name
    import matplotlib

    return Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / name


def jpeg_payloads(shorter_side: int = 480, quality: int = 90) -> list[bytes]:
    """Each photo resized to a ``shorter_side`` (default 480: a 640x480 upload) as JPEG."""
    payloads = []
    for package, name in PHOTO_SOURCES:
        image = Image.open(_photo_path(package, name)).convert("RGB")
        scale = shorter_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        payloads.append(buffer.getvalue())
    return payloads


def multipart_files(field: str, images: list[bytes]) -> tuple[bytes, str]:
    """A multipart body with one part per image, all under ``field``, and its content type.
    Encode once, send many times: the generator must not spend its CPU on encoding."""
    boundary = uuid.uuid4().hex
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="photo{i}.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + image
        + b"\r\n"
        for i, image in enumerate(images)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def multipart_body(image: bytes, field: str = "file") -> tuple[bytes, str]:
    return multipart_files(field, [image])


HttpRequest = tuple[bytes, dict[str, str]]  # body and headers, encoded once, sent many times


def upload_requests() -> list[HttpRequest]:
    """One multipart upload of each payload photo, for /v1/classify."""
    return [(body, {"Content-Type": content_type}) for body, content_type in map(multipart_body, jpeg_payloads())]


def v2_binary_body(images: np.ndarray, input_name: str = "images") -> tuple[bytes, dict[str, str]]:
    """An Open Inference Protocol v2 request with the uint8 batch as binary tensor data:
    what high-volume clients send, with no decode left for the server and no JSON floats."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "datatype": "UINT8",
                    "shape": list(images.shape),
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True, "classification": 5}}],
        }
    ).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    return header + np.ascontiguousarray(images, dtype=np.uint8).tobytes(), headers


def grpc_infer_request(
    images: np.ndarray, model: str, input_name: str = "images", output_name: str = "probabilities", top_k: int = 5
) -> bytes:
    """The same uint8 batch as ``v2_binary_body``, as a serialized gRPC ``ModelInferRequest``: the
    tensor in ``raw_input_contents`` and top-``top_k`` through the classification parameter, as
    tritonclient.grpc sends them (``InferRequestedOutput(..., class_count=top_k)``). Serialize
    once, send many times."""
    array = np.ascontiguousarray(images, dtype=np.uint8)
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name=input_name, datatype="UINT8", shape=list(array.shape))],
        outputs=[
            pb.ModelInferRequest.InferRequestedOutputTensor(
                name=output_name, parameters={"classification": pb.InferParameter(int64_param=top_k)}
            )
        ],
        raw_input_contents=[array.tobytes()],
    )
    serialized: bytes = request.SerializeToString()
    return serialized


def preprocessed_photos(size: int = 224) -> np.ndarray:
    """The payload photos as the model's uint8 input: shorter side to 256/224 of ``size``, centre crop."""
    from model_contract.preprocess import PreprocessSpec, center_crop_resize

    spec = PreprocessSpec(resize_shorter_side=round(size * 256 / 224), crop_size=size)
    images = [Image.open(io.BytesIO(p)) for p in jpeg_payloads()]
    return np.stack([center_crop_resize(im, spec) for im in images])
