"""The node daemon's use of the C heap (glibc malloc): fewer arenas, free memory given back.

A node's key ingest allocates and frees megabytes a second in short-lived buffers (a module's 014
reply of up to 8,192 keys is ~1 MB of JSON, then the key columns cut from it and the store's ingest
batch). glibc keeps freed memory for reuse, in the heap and in one arena per thread that allocated
(up to 8 per core: the key store's ingest and checkpoint threads, asyncio's worker threads, gRPC's).
On the 50-node benchmark network (bench/network_bench.py) that was ~12 MB of PSS per node that held
nothing once the key stores had filled. So:

* `tune()`: at most two arenas (`M_ARENA_MAX`), for the node's few threads;
* `trim_periodically()`: `malloc_trim(0)` every few seconds (it also releases free pages inside the
  heap, not only at its top; about a millisecond).

Deliberately not set: a fixed mmap threshold. It returns each large buffer to the system on free,
but measured on a module pair (128 kB) it multiplied page faults by ten, tripled the system CPU time
and made each key ~50% dearer in CPU; glibc's dynamic threshold reuses that memory instead, and the periodic trim returns it.

`tune()` is called by the node zygote before it forks nodes (the setting is inherited) and by
`qkdnode run` itself. On a C library without these functions both do nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from typing import Any

__all__ = ["ARENA_MAX", "TRIM_INTERVAL_S", "trim", "trim_periodically", "tune"]

_M_ARENA_MAX = -8
ARENA_MAX = 2
TRIM_INTERVAL_S = 5.0

_libc: Any = None


def _c_library() -> Any:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        except OSError:
            _libc = False
    return _libc


def tune() -> bool:
    """At most ARENA_MAX malloc arenas; True if the C library took the setting."""
    mallopt = getattr(_c_library(), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, ARENA_MAX) == 1)


def trim() -> None:
    """Give free heap memory back to the system (`malloc_trim(0)`)."""
    malloc_trim = getattr(_c_library(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


async def trim_periodically(interval_s: float = TRIM_INTERVAL_S) -> None:
    """`trim()` every `interval_s` seconds, until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        trim()
