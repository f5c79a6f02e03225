"""Server memory across a burst of large uploads: does it come back?

    python -m loadtests.memory_burst

Starts ``imgserve serve`` (the default model unless ``--repository``/``--model`` say otherwise),
sends a few small photos, reads the server's resident memory, then sends ``--rounds`` rounds
of ten large generated images (RGBA and 16-bit PNGs, RGB PNGs and WebPs, 6 to 27 megapixels,
each within the default limits), ``--clients`` at a time, and reads the peak and the resident
memory ``--settle`` seconds after. Loopback only.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from loadtests.payloads import jpeg_payloads
from loadtests.server_process import free_port, server_process

# (format, mode, width, height): smooth content, so the files stay small and the decodes large.
LARGE_IMAGES = [
    ("PNG", "RGBA", 3100, 4331),
    ("PNG", "RGB", 2516, 3044),
    ("PNG", "I;16", 2965, 4029),
    ("WEBP", "RGB", 5682, 3934),
    ("PNG", "RGBA", 5109, 5230),
    ("PNG", "RGB", 3719, 2384),
    ("PNG", "I;16", 5996, 2116),
    ("WEBP", "RGB", 5193, 3772),
    ("PNG", "RGBA", 4000, 3000),
    ("PNG", "I;16", 4000, 3000),
]


def large_image(fmt: str, mode: str, width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width]
    if mode == "I;16":
        image = Image.fromarray((x * 65535 // width).astype(np.uint16))
    else:
        bands = [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height), 255 - x * 255 // width]
        image = Image.fromarray(np.stack(bands[: len(mode)], -1).astype(np.uint8), mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"compress_level": 1} if fmt == "PNG" else {"quality": 80}))
    return buffer.getvalue()


def status_mb(pid: int, key: str) -> float:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(key))
    return round(int(line.split()[1]) / 1024, 1)


def measure(args: argparse.Namespace) -> dict[str, object]:
    uploads = [large_image(*spec) for spec in LARGE_IMAGES] * args.rounds
    port = free_port()
    command = [sys.executable, "-m", "imgserve", "serve", "--port", str(port)]
    command += ["--model-repository", str(args.repository)]
    env = {"IMGSERVE_DEFAULT_MODEL": args.model}
    with (
        server_process(command, port, env) as (base_url, process),
        httpx.Client(base_url=base_url, timeout=120) as client,
    ):
        for photo in jpeg_payloads():
            client.post("/v1/classify", content=photo, headers={"Content-Type": "image/jpeg"})
        time.sleep(1.0)
        before = status_mb(process.pid, "VmRSS")

        def post(data: bytes) -> int:
            return client.post("/v1/classify", content=data, headers={"Content-Type": "image/png"}).status_code

        with ThreadPoolExecutor(args.clients) as pool:
            statuses = list(pool.map(post, uploads))
        time.sleep(args.settle)
        return {
            "uploads": len(uploads),
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "rss_before_mb": before,
            "rss_peak_mb": status_mb(process.pid, "VmHWM"),
            "rss_after_mb": status_mb(process.pid, "VmRSS"),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="rounds of the ten large images")
    parser.add_argument("--clients", type=int, default=8, help="uploads at a time")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before the last reading")
    parser.add_argument("--repository", type=Path, default=Path("models"), help="model repository")
    parser.add_argument("--model", default="efficientnet_lite0", help="model behind /v1/classify")
    report = measure(parser.parse_args())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
