"""Decode memory: the peak for a large image stays near its decoded size, and a burst of large
decodes leaves RSS where it started. Each measurement runs in a fresh process, read from
/proc (Pillow's allocations are invisible to tracemalloc)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from model_contract.memory import release_freed_memory
from tests.conftest import REPO_ROOT

MB = 1024 * 1024

needs_linux_proc = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc to reset and read peak RSS"
)
needs_glibc = pytest.mark.skipif(
    not (hasattr(os, "confstr") and os.confstr("CS_GNU_LIBC_VERSION")), reason="glibc's allocator only"
)

# Runs in the child: builds its images, resets the peak, decodes, prints what /proc says.
MEASURE = textwrap.dedent(
    """
    import io, json, sys
    from concurrent.futures import ThreadPoolExecutor
    import numpy as np
    from PIL import Image
    from loadtests.in_process import GENEROUS_LIMITS
    from model_contract.imaging import image_to_tensor
    from model_contract.preprocess import PreprocessSpec

    def status(key):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key))

    def png(mode, width, height):
        y, x = np.mgrid[0:height, 0:width]
        if mode == "I;16":
            image = Image.fromarray((x * 65535 // width).astype(np.uint16))
        else:
            bands = [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height), 255 - x * 255 // width]
            image = Image.fromarray(np.stack(bands, -1).astype(np.uint8), "RGBA")
        buffer = io.BytesIO()
        image.save(buffer, "PNG", compress_level=1)
        return buffer.getvalue()

    case = json.loads(sys.argv[1])
    images = [png(mode, width, height) for mode, width, height in case["images"]]
    spec = PreprocessSpec(resize_shorter_side=256, crop_size=224)
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from here
    before = status("VmRSS")
    with ThreadPoolExecutor(case["threads"]) as pool:
        list(pool.map(lambda data: image_to_tensor(data, spec, GENEROUS_LIMITS).shape, images * case["repeat"]))
    peak, after = status("VmHWM"), status("VmRSS")
    print(json.dumps({"before": before, "peak": peak, "after": after}))
    """
)


def measure(images: list[tuple[str, int, int]], threads: int = 1, repeat: int = 1) -> dict:
    case = json.dumps({"images": images, "threads": threads, "repeat": repeat})
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, case], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    result: dict = json.loads(done.stdout)
    return result


@needs_linux_proc
@pytest.mark.parametrize(("mode", "bytes_per_pixel"), [("RGBA", 4), ("I;16", 2)])
def test_decoding_a_large_image_costs_about_its_decoded_size(mode: str, bytes_per_pixel: int) -> None:
    # 16 megapixels. Before shrinking came first, conversions made the peak 4.8x (RGBA) and
    # 6.6x (16-bit) the decoded size.
    decoded = 4000 * 4000 * bytes_per_pixel
    result = measure([(mode, 4000, 4000)])
    assert result["peak"] - result["before"] < 1.5 * decoded + 16 * MB


@needs_linux_proc
@needs_glibc
def test_memory_goes_back_to_the_os_after_a_burst_of_large_decodes() -> None:
    # Without the trim after large decodes, this burst left RSS about 150 MB up.
    assert release_freed_memory()
    burst = [("RGBA", 3000, 2400), ("I;16", 2600, 3100), ("RGBA", 2200, 3300)]
    result = measure(burst, threads=3, repeat=4)
    assert result["after"] - result["before"] < 80 * MB
