"""The daemon's event loop and its life cycle: uvloop, stop signals, bounded shutdowns.

uvloop (libuv) when available, else asyncio's default loop: uvloop roughly doubles the request
rate of the ETSI 014 server on the same hardware (see bench/keys_bench.py); every library the node
uses (asyncssh, aiohttp, grpc.aio) runs on it.

Shutdown contract of every process `qkdnet up` starts (node daemon, optical plant stub, QRNG
service): SIGINT or SIGTERM starts an ordered stop (`Shutdown`) whose steps each have a bound and
share one overall budget; a step that is late or fails is logged in one line (never a traceback)
and left behind, so the next steps still run. A hard deadline (`arm_hard_stop`), armed when the
signal arrives, ends the process even if a step blocks the event loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Awaitable, Coroutine, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

#: seconds from the stop signal until the process is gone, whatever its stop steps do
HARD_STOP_S = 5.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


async def wait_for_stop_signal(hard_stop_s: float | None = HARD_STOP_S) -> None:
    """Return when the process gets SIGINT or SIGTERM (how qkdnet stops the processes it starts).

    Meant for a process's main coroutine: with `hard_stop_s`, the process exits at the latest that
    many seconds after the signal (see `arm_hard_stop`); None for no deadline."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if hard_stop_s is not None:
        arm_hard_stop(hard_stop_s)


def arm_hard_stop(seconds: float, code: int = 1) -> threading.Timer:
    """End the process `seconds` from now (`os._exit(code)`, one line on stderr) unless it exited
    before. A thread, not the event loop: it fires even when a stop step blocks the loop."""

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = spec.name if spec is not None else os.path.basename(sys.argv[0]) or "python"

    def fire() -> None:
        try:
            sys.stderr.write(f"{name}[{os.getpid()}]: not stopped {seconds:g} s after the stop signal; exiting now\n")
            sys.stderr.flush()
        finally:
            os._exit(code)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    return timer


class Shutdown:
    """An ordered stop with an overall budget: `await sd.step(name, aw, at_most)` awaits one step
    for at most `at_most` seconds and never beyond the budget's end. A late step is cancelled and
    abandoned, a failing one logged; both in one warning line, never a traceback (an expected
    cancellation is not an error). `late` names the steps that did not complete."""

    def __init__(self, what: str, budget_s: float) -> None:
        self.what = what
        self.deadline = time.monotonic() + budget_s
        self.late: list[str] = []

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    async def step(self, name: str, aw: Awaitable[Any], at_most: float | None = None) -> bool:
        """True when the step completed in time without an error."""
        limit = self.remaining() if at_most is None else min(at_most, self.remaining())
        if limit <= 0:
            if asyncio.iscoroutine(aw):
                aw.close()  # never started: no "was never awaited" warning
            self.late.append(name)
            log.warning("%s: no time left to stop %s", self.what, name)
            return False
        task = asyncio.ensure_future(aw)
        task.add_done_callback(_consume)
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()  # let it unwind briefly, but never wait on a step that ignores cancellation
            await asyncio.wait({task}, timeout=min(0.2, self.remaining()))
            self.late.append(name)
            log.warning("%s: %s did not stop within %.1f s; left behind", self.what, name, limit)
            return False
        if task.cancelled():
            self.late.append(name)
            log.warning("%s: stopping %s was cancelled", self.what, name)
            return False
        exc = task.exception()
        if exc is not None:
            self.late.append(name)
            log.warning("%s: stopping %s failed: %s: %s", self.what, name, type(exc).__name__, exc)
            return False
        return True


def _consume(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned step's outcome, so that asyncio never reports it with a traceback."""
    if not task.cancelled():
        task.exception()
