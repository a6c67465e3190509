"""The optical plant stub: fibres, switch fabrics and where each transmitter's light lands.

This is the hardware we do not have, in one small service shared by a network's nodes: each
node's switch driver reports its cross-connects (what the TAPI datastore configured), and each
node's modules learn from it which receiver their light reaches and through how much loss
(fibre + switch insertion + mux losses along the cross-connected path). `qkdnet fibre cut` and
`restore` act here. Plain HTTP on loopback: it stands for glass, not for a management interface.

A cross-connect is `[p, q]` (broadband: the whole fibre passes) or `[p, q, lower_mhz, upper_mhz]`
(only that band passes, like a wavelength-selective switch). A port may carry several cross-connects
when their bands are disjoint (WDM add/drop); light is traced by its transmitter's frequency
(`frequency_mhz` of the module in the plant spec, or reported by the switch's node with its
cross-connects). A transmitter of unknown frequency passes a band-limited port only when that port
has a single cross-connect.

    python -m qkdnode.devices.fabric --plant plant.json --port N
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from ..eventloop import HARD_STOP_S, Shutdown, wait_for_stop_signal

log = logging.getLogger(__name__)

Port = tuple[str, int]  # (switch name, port number)
Band = tuple[int, int]  # (lower, upper) frequency, MHz; half-open: [lower, upper)
DARK_LOSS_DB = 99.0


def bands_overlap(a: Band | None, b: Band | None) -> bool:
    """None is the whole fibre, which overlaps everything."""
    if a is None or b is None:
        return True
    return a[0] < b[1] and b[0] < a[1]


@dataclass(frozen=True)
class CrossConnect:
    a: int
    b: int
    band: Band | None = None  # None: broadband

    def other(self, port: int) -> int:
        return self.b if port == self.a else self.a

    def passes(self, frequency_mhz: int | None) -> bool:
        if self.band is None:
            return True
        return frequency_mhz is not None and self.band[0] <= frequency_mhz < self.band[1]

    def to_json(self) -> list[int]:
        return [self.a, self.b, *self.band] if self.band is not None else [self.a, self.b]


@dataclass
class FibreEnd:
    switch: str | None = None
    port: int | None = None
    module: str | None = None


@dataclass
class Fibre:
    name: str
    a: FibreEnd
    b: FibreEnd
    loss_db: float
    mux_loss_db: float = 0.0
    cut: bool = False
    group: str = ""  # the physical fibre: static pairs sharing a fibre are channels of one group


@dataclass
class Switch:
    name: str
    node: str
    insertion_loss_db: float
    ports: int
    cross_connects: dict[int, list[CrossConnect]] = field(default_factory=dict)  # port -> its cross-connects

    def route(self, port: int, frequency_mhz: int | None) -> int | None:
        """The port light entering `port` leaves by (None: blocked, no cross-connect passes it)."""
        xcs = self.cross_connects.get(port) or []
        if frequency_mhz is None:
            # unknown wavelength: only an unambiguous cross-connect takes it
            return xcs[0].other(port) if len(xcs) == 1 else None
        for xc in xcs:
            if xc.passes(frequency_mhz):
                return xc.other(port)
        return None


@dataclass
class ModulePlace:
    name: str
    node: str
    role: str
    technology: str
    switch: str | None
    port: int | None
    channel: dict[str, Any] | None
    node_id: str | None = None
    qkdi_id: int | None = None
    frequency_mhz: int | None = None  # what the transmitter emits (None: unknown)


@dataclass(frozen=True)
class LightPath:
    transmitter: str
    receiver: str | None
    loss_db: float
    hops: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"transmitter": self.transmitter, "receiver": self.receiver,
                "loss_db": round(self.loss_db, 3), "hops": list(self.hops)}


class Plant:
    """The physical network: pure computation, no I/O."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.switches = {
            n: Switch(n, s["node"], float(s.get("insertion_loss_db", 1.0)), int(s.get("ports", 16)))
            for n, s in (spec.get("switches") or {}).items()
        }
        self.modules = {
            n: ModulePlace(n, m["node"], m["role"], m["technology"], m.get("switch"), m.get("port"), m.get("channel"),
                           m.get("node_id"), m.get("qkdi_id"),
                           int(m["frequency_mhz"]) if m.get("frequency_mhz") is not None else None)
            for n, m in (spec.get("modules") or {}).items()
        }
        self.fibres: dict[str, Fibre] = {}
        for n, f in (spec.get("fibres") or {}).items():
            self.fibres[n] = Fibre(n, FibreEnd(**f["a"]), FibreEnd(**f["b"]), float(f["loss_db"]),
                                   float(f.get("mux_loss_db", 0.0)), group=str(f.get("group") or n))
        self.version = 0
        self._port_fibre: dict[Port, tuple[Fibre, str]] = {}
        self._module_fibre: dict[str, tuple[Fibre, str]] = {}
        for fibre in self.fibres.values():
            for side, end in (("a", fibre.a), ("b", fibre.b)):
                if end.module:
                    self._module_fibre[end.module] = (fibre, side)
                elif end.switch is not None and end.port is not None:
                    self._port_fibre[(end.switch, end.port)] = (fibre, side)
        self._port_module = {(m.switch, m.port): m.name for m in self.modules.values() if m.switch}

    # -- changes ----------------------------------------------------------------------------------
    def set_cross_connects(self, switch: str, entries: list[list[int]] | list[tuple[int, ...]]) -> None:
        """Replace a switch's cross-connects: `[p, q]` or `[p, q, lower_mhz, upper_mhz]` each."""
        sw = self.switches[switch]
        xc: dict[int, list[CrossConnect]] = {}
        for entry in entries:
            if len(entry) not in (2, 4):
                raise ValueError(f"a cross-connect is [p, q] or [p, q, lower_mhz, upper_mhz], not {list(entry)}")
            p, q = int(entry[0]), int(entry[1])
            band = (int(entry[2]), int(entry[3])) if len(entry) == 4 else None
            if p == q:
                raise ValueError(f"{switch} port {p} cross-connected to itself")
            if band is not None and band[0] >= band[1]:
                raise ValueError(f"empty band {band[0]}-{band[1]} MHz")
            new = CrossConnect(p, q, band)
            for port in (p, q):
                if not 1 <= port <= sw.ports:
                    raise ValueError(f"{switch} has no port {port}")
                for old in xc.get(port, []):
                    if bands_overlap(old.band, band):
                        raise ValueError(f"{switch} port {port} used twice in overlapping bands")
                xc.setdefault(port, []).append(new)
        if xc != sw.cross_connects:
            sw.cross_connects = xc
            self.version += 1

    def set_frequencies(self, frequencies: dict[str, int | None]) -> None:
        """What transmitters emit, as their nodes know it."""
        for name, f in frequencies.items():
            m = self.modules.get(name)
            if m is not None and m.frequency_mhz != f:
                m.frequency_mhz = None if f is None else int(f)
                self.version += 1

    def groups(self) -> set[str]:
        return {f.group for f in self.fibres.values()}

    def set_cut(self, group: str, cut: bool) -> None:
        """Cut or restore a physical fibre (every channel of its group)."""
        changed = False
        for f in self.fibres.values():
            if f.group == group and f.cut != cut:
                f.cut = cut
                changed = True
        if changed:
            self.version += 1

    # -- light paths ------------------------------------------------------------------------------
    def _other(self, fibre: Fibre, side: str) -> FibreEnd:
        return fibre.b if side == "a" else fibre.a

    def trace(self, transmitter: str) -> LightPath:
        m = self.modules[transmitter]
        loss = 0.0
        hops: list[str] = []
        if m.switch is None:
            entry = self._module_fibre.get(m.name)
            if entry is None:
                return LightPath(m.name, None, DARK_LOSS_DB, ())
            fibre, side = entry
            end = self._cross_fibre(fibre, side, hops)
            if end is None:
                return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))
            loss += fibre.loss_db + fibre.mux_loss_db
            at: Port | None = (end.switch, end.port) if end.switch else None  # type: ignore[assignment]
            if end.module:
                return LightPath(m.name, end.module, loss, tuple(hops))
        else:
            at = (m.switch, int(m.port))  # type: ignore[arg-type]
        seen: set[Port] = set()
        while at is not None:
            if at in seen:
                return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))  # a loop is dark
            seen.add(at)
            sw = self.switches[at[0]]
            out = sw.route(at[1], m.frequency_mhz)
            if out is None:
                return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))
            loss += sw.insertion_loss_db
            hops.append(f"{sw.name}:{at[1]}-{out}")
            landed = self._port_module.get((sw.name, out))
            if landed is not None:
                return LightPath(m.name, landed, loss, tuple(hops))
            entry = self._port_fibre.get((sw.name, out))
            if entry is None:
                return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))
            fibre, side = entry
            end = self._cross_fibre(fibre, side, hops)
            if end is None:
                return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))
            loss += fibre.loss_db + fibre.mux_loss_db
            if end.module:
                return LightPath(m.name, end.module, loss, tuple(hops))
            at = (end.switch, end.port)  # type: ignore[assignment]
        return LightPath(m.name, None, DARK_LOSS_DB, tuple(hops))

    def _cross_fibre(self, fibre: Fibre, side: str, hops: list[str]) -> FibreEnd | None:
        hops.append(fibre.name)
        return None if fibre.cut else self._other(fibre, side)

    def light_paths(self) -> list[LightPath]:
        out = []
        for m in self.modules.values():
            if m.role != "transmitter":
                continue
            lp = self.trace(m.name)
            if lp.receiver is not None:
                rx = self.modules[lp.receiver]
                if rx.role != "receiver" or rx.technology != m.technology:
                    lp = LightPath(m.name, None, DARK_LOSS_DB, lp.hops)  # light lands on a module that cannot use it
            out.append(lp)
        return out


class FabricService:
    def __init__(self, plant: Plant) -> None:
        self.plant = plant
        self._changed = asyncio.Condition()
        self.closing = False  # set by close(): pending long polls answer at once

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def close(self) -> None:
        """Answer every pending long poll now (with the current plant), so that a shutdown
        neither waits for them nor has to cancel them."""
        self.closing = True
        await self._notify()

    async def wait_changed(self, after: int, wait: float) -> None:
        """Until the plant's version passes `after`, the service closes, or `wait` seconds passed.

        The timeout is a cancellation of this very task (`asyncio.timeout`) around the whole
        `async with`: `Condition.wait` re-acquires the lock before it lets any cancellation out,
        so the lock is held again whenever `async with` releases it. (`asyncio.wait_for` around
        `wait_for()` ran the wait in another task: cancelled again at shutdown while that task
        was re-acquiring, the `async with` released a lock it did not hold: "Lock is not
        acquired".) A cancellation from outside (server shutdown) propagates as such."""
        try:
            async with asyncio.timeout(wait):
                async with self._changed:
                    await self._changed.wait_for(lambda: self.closing or self.plant.version > after)
        except TimeoutError:
            pass

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_put("/switches/{name}/cross-connects", self.put_cross_connects)
        app.router.add_get("/switches/{name}/cross-connects", self.get_cross_connects)
        app.router.add_post("/fibres/{name}/{action:cut|restore}", self.fibre_action)
        app.router.add_get("/fibres", self.get_fibres)
        app.router.add_get("/lightpaths", self.get_light_paths)
        return app

    async def put_cross_connects(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.plant.switches:
            return web.json_response({"message": f"no switch {name}"}, status=404)
        try:
            body = await request.json()
            entries = [[int(v) for v in entry] for entry in body["cross_connects"]]
            frequencies = body.get("frequencies") or {}
            self.plant.set_cross_connects(name, entries)
            self.plant.set_frequencies({str(k): None if v is None else int(v) for k, v in frequencies.items()})
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"message": f"bad cross-connects: {exc}"}, status=400)
        await self._notify()
        return web.json_response({"version": self.plant.version})

    async def get_cross_connects(self, request: web.Request) -> web.Response:
        sw = self.plant.switches.get(request.match_info["name"])
        if sw is None:
            return web.json_response({"message": f"no switch {request.match_info['name']}"}, status=404)
        unique = {id(xc): xc for xcs in sw.cross_connects.values() for xc in xcs}
        entries = sorted(xc.to_json() for xc in unique.values())
        return web.json_response({"switch": sw.name, "cross_connects": entries, "version": self.plant.version})

    async def fibre_action(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.plant.groups():
            return web.json_response({"message": f"no fibre {name}"}, status=404)
        cut = request.match_info["action"] == "cut"
        self.plant.set_cut(name, cut)
        await self._notify()
        return web.json_response({"fibre": name, "cut": cut, "version": self.plant.version})

    async def get_fibres(self, request: web.Request) -> web.Response:
        out: dict[str, dict[str, Any]] = {}
        for f in self.plant.fibres.values():
            g = out.setdefault(f.group, {"loss_db": f.loss_db, "cut": f.cut, "channels": []})
            g["channels"].append(f.name)
        return web.json_response(out)

    async def get_light_paths(self, request: web.Request) -> web.Response:
        """`?after=V` waits (up to `wait` s) until the plant changed past version V."""
        after = int(request.query.get("after", "-1"))
        wait = min(float(request.query.get("wait", "0")), 30.0)
        if self.plant.version <= after and wait > 0 and not self.closing:
            await self.wait_changed(after, wait)
        return web.json_response({
            "version": self.plant.version,
            "light_paths": [lp.to_json() for lp in self.plant.light_paths()],
            "modules": {n: {"node": m.node, "node_id": m.node_id, "qkdi_id": m.qkdi_id, "role": m.role,
                            "technology": m.technology, "channel": m.channel}
                        for n, m in self.plant.modules.items()},
        })


async def serve(plant_file: Path, host: str, port: int) -> None:
    service = FabricService(Plant(json.loads(plant_file.read_text())))
    # long polls are pending at any time: they are answered at close(); a handler still running
    # after shutdown_timeout is cancelled, which get_light_paths is safe under
    runner = web.AppRunner(service.app(), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"READY fabric http://{host}:{port}", flush=True)
    await wait_for_stop_signal()  # arms the hard stop (eventloop.HARD_STOP_S)
    sd = Shutdown("optical plant stub", HARD_STOP_S - 1.0)
    await sd.step("long polls", service.close(), 0.5)
    await sd.step("HTTP server", runner.cleanup())


def main() -> None:
    ap = argparse.ArgumentParser(description="optical plant stub (fibres and switch fabrics)")
    ap.add_argument("--plant", required=True, type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    asyncio.run(serve(args.plant, args.host, args.port))


if __name__ == "__main__":
    main()
