"""Memory that large decodes free goes back to the OS, without slowing the model down.

glibc serves allocations below its mmap threshold from per-thread heaps ("arenas"), and each
time a large mmapped block is freed it raises that threshold to the block's size, up to 32 MiB.
After the first large image, Pillow's image blocks (up to 16 MiB each) and numpy's buffers come
from the heaps, where fragmentation between the decode threads keeps them: measured on 2 cores,
RSS stayed 55-170 MB above its start after a burst of 88 large decodes on 2-4 threads.

Fixing the threshold would hand such buffers back on free, but it costs the model: TensorFlow's
activations (tens of MB at larger batches) would then be mapped and unmapped, and their pages
zeroed, on every op. Measured with the default model under load: 15 % fewer requests per second.
So the threshold stays dynamic, and after a decode whose image was large the decode thread asks
glibc to return what is free in every arena (``malloc_trim(0)``): rare, and a few milliseconds.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache

# Decoded images at least this large (about 2.8 megapixels in RGB) are followed by a trim,
# which takes about 0.4 ms; a typical upload (640x480, 1 MB decoded) never is.
RELEASE_AFTER_BYTES = 8 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (not musl, macOS or Windows)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (AttributeError, ValueError, OSError):
        return None


def release_freed_memory() -> bool:
    """Hand the heaps' free pages back to the OS; False where the C library is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
