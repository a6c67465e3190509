"""The daemon's event loop: uvloop (libuv) when available, else asyncio's default loop.

uvloop roughly doubles the request rate of the ETSI 014 server on the same hardware (see
bench/keys_bench.py); every library the node uses (asyncssh, aiohttp, grpc.aio) runs on it.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def wait_for_stop_signal() -> None:
    """Return when the process gets SIGINT or SIGTERM (how qkdnet stops the processes it starts)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
