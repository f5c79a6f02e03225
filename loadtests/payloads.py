"""Real photographs as upload payloads, the size a phone or web client typically sends."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

from PIL import Image

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
