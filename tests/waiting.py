"""Waiting in async tests for a condition that other tasks or processes bring about."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(pred: Callable[[], object], timeout: float = 5.0,
                what: str | Callable[[], str] = "condition") -> None:
    """Return once `pred()` is true; AssertionError naming `what` (text, or a function that tells
    the state at the time) after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
        await asyncio.sleep(0.005)
