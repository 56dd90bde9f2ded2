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

Only glibc has ``mallopt``; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

# From glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, kept instead of raised
TRIM_THRESHOLD_BYTES = 4 * 1024 * 1024


def return_freed_memory() -> bool:
    """Fix glibc's malloc thresholds for this process; False where there is no glibc to tune."""
    # The process's own symbols, not find_library("c"): that runs ldconfig in a child process.
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc's mallopt takes these parameters
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not done:
        log.warning("could not set malloc thresholds; memory freed after large requests may stay in the process")
    return done
