"""Follow the optical plant stub: which peer module each local module's light reaches, and the loss.

The node asks the plant (`devices/fabric.py`) by long poll; it stands for the photodiodes and
power meters of real hardware. Switch drivers report cross-connects through `report_switch()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp

from .devices.fabric import DARK_LOSS_DB

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Light:
    """What a local module sees: its peer module (None: dark) and the channel loss."""

    peer: str | None
    peer_node_id: str | None
    peer_qkdi: int | None
    loss_db: float
    channel: dict[str, Any] | None  # the receiver's channel address


LightHandler = Callable[[dict[str, Light]], Awaitable[None]]


def lights_for(modules: set[str], data: dict[str, Any]) -> dict[str, Light]:
    places = data["modules"]
    out = {m: Light(None, None, None, DARK_LOSS_DB, None) for m in modules}
    for lp in data["light_paths"]:
        tx, rx, loss = lp["transmitter"], lp["receiver"], float(lp["loss_db"])
        if rx is None:
            continue
        if tx in modules:
            p = places[rx]
            out[tx] = Light(rx, p.get("node_id"), p.get("qkdi_id"), loss, p.get("channel"))
        if rx in modules:
            p = places[tx]
            out[rx] = Light(tx, p.get("node_id"), p.get("qkdi_id"), loss, places[rx].get("channel"))
    return out


class FabricClient:
    def __init__(self, url: str, modules: set[str], handler: LightHandler) -> None:
        self.url = url.rstrip("/")
        self.modules = modules
        self.handler = handler
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.version = -1

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=40))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()

    async def report_switch(self, switch: str, cross_connects: list[list[int]],
                            frequencies: dict[str, int | None] | None = None) -> None:
        """Set a switch's cross-connects (`[p, q]` or `[p, q, lower_mhz, upper_mhz]`); `frequencies`:
        what the node's transmitters emit (MHz), for tracing light through band-limited ones."""
        assert self._session is not None
        body: dict[str, Any] = {"cross_connects": cross_connects}
        if frequencies:
            body["frequencies"] = frequencies
        async with self._session.put(f"{self.url}/switches/{switch}/cross-connects", json=body) as r:
            if r.status != 200:
                raise RuntimeError(f"the switch fabric refused the cross-connects: {(await r.json()).get('message')}")

    async def _run(self) -> None:
        assert self._session is not None
        backoff = 0.1
        while True:
            try:
                async with self._session.get(f"{self.url}/lightpaths",
                                             params={"after": str(self.version), "wait": "20"}) as r:
                    data = await r.json()
                backoff = 0.1
                if data["version"] == self.version:
                    continue
                self.version = data["version"]
                await self.handler(lights_for(self.modules, data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the plant is down or restarting: keep trying
                log.debug("fabric poll failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
