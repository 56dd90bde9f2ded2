"""glibc malloc tuned so that memory freed after large requests goes back to the operating system.

glibc raises its mmap threshold (to up to 32 MiB) each time a large block is freed, and its trim
threshold with it: after a few requests of several MiB, blocks that size come from the heaps of
whichever threads allocated them (gRPC's transport threads each have one) and stay there once
freed. 100 refused 8 MiB requests left RSS 30-50 MiB higher. Fixing both thresholds (large
blocks always mapped on their own and unmapped when freed; heaps trimmed once 4 MiB at their top
are free) bounds that, at the cost of fresh pages for each block of 128 KiB or more (measured:
the wide bench model's p50 ~10% higher than with the setting off). 1 MiB avoided that cost, but
blocks of 128 KiB-1 MiB then stay in the heaps, and the refused-request test grew past its bound
in one CI run of three.

Thresholds alone do not cover a gRPC message over --max-request-bytes: grpc core reads most of it
before its size check refuses it (measured: 7 MiB of each 9 MiB message), in 64 KiB read slices
(under any mmap threshold worth having) from the malloc arena of whichever poller thread read them.
Freed, they leave holes in the middle of those arenas, which glibc returns only when told to
(``malloc_trim``): ten refused 9 MiB messages left 15-45 MiB in the arenas of a server warmed with
valid requests. So a thread
looks at RSS every second and calls ``malloc_trim(0)`` when it has grown by more than the trim
threshold since the last look: nothing when memory is steady, a few milliseconds when it is not.

Only glibc has ``mallopt`` and ``malloc_trim``; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept instead of raised
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024
TRIM_INTERVAL_S = 1.0

# One trimming thread per process (malloc is process-wide); the pid guards against a forked child
# that inherited the flag but not the thread.
_trimming_in: int | None = None


def return_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process and start trimming its heaps when RSS grows;
    False where there is no glibc to tune."""
    # The process's own symbols, not find_library("c"): that runs ldconfig in a child process.
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc's mallopt takes these parameters
        mallopt = libc.mallopt
        malloc_trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.warning("could not set malloc thresholds; memory freed after large requests may stay in the process")
    _start_trimming(lambda: malloc_trim(0))
    return done


def _start_trimming(trim: Callable[[], object]) -> None:
    global _trimming_in
    if _trimming_in == os.getpid() or rss_bytes() is None:
        return
    _trimming_in = os.getpid()
    threading.Thread(target=_trim_when_grown, args=(trim,), name="serve-malloc-trim", daemon=True).start()


def _trim_when_grown(trim: Callable[[], object]) -> None:
    # ctypes releases the GIL around malloc_trim: only the arenas it walks wait for it.
    kept = rss_bytes() or 0
    while True:
        time.sleep(TRIM_INTERVAL_S)
        rss = rss_bytes() or 0
        if rss - kept > TRIM_THRESHOLD_BYTES:
            trim()
            kept = rss_bytes() or 0
            log.debug("malloc_trim: RSS %d -> %d bytes", rss, kept)
        else:
            kept = min(kept, rss)


def rss_bytes() -> int | None:
    """This process's resident memory, from /proc (None without one)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
