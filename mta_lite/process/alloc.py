"""alloc — the C allocator's thresholds for a long-running service process (glibc mallopt).

asyncio reads every socket with recv(256 KiB) (the selector transport's max_size) and then
shrinks the bytes object to what arrived. glibc serves a request that big with its own
mmap() and gives it back with munmap() on free: mmap, mremap, munmap and a freshly zeroed
page per read, about 9 us of system time each, six to seven reads per message in each of
smtpd and qmgr. Raising the mmap threshold above the read size keeps those buffers in the
heap; raising the trim threshold with it keeps the heap from being shrunk (brk) and grown
again after each read. Only touched pages are resident, so a read of 1 KiB still costs one
page of memory, not 256 KiB.

Guarantees: tune() changes nothing but these two allocator settings, and is a no-op where
the C library has no mallopt (musl) or refuses a value.
Must never: fail a start; it is a speed-up, not a requirement.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("mta_lite.master")

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Above asyncio's 256 KiB socket read (selector_events._SelectorSocketTransport.max_size).
MMAP_THRESHOLD_BYTES = 512 * 1024
# Free heap kept at the top before it is given back: room for two such reads.
TRIM_THRESHOLD_BYTES = 1024 * 1024


def tune() -> bool:
    """Set both thresholds; True if the C library took them."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False            # not glibc: its allocator may not have the problem either
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    took = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    took = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and took
    if not took:
        log.debug("mallopt refused the thresholds; socket reads keep their mmap cost")
    return took
