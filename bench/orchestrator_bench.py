"""Orchestrator figures.

* `orch.provision_6hop`: `provision_route` (what POST /routes does) of a 6-hop key route (7 nodes:
  lock, edit-config, validate, commit, unlock on every node of the path) on a real network of
  node processes; median of 7 routes after a first one (the nodes' first edits) not counted.
* `orch.reroute`: a hop of an installed 6-hop route goes down; the orchestrator recomputes the
  route around it and reinstalls it (same qkdl_id) on every node concerned; median.
* `orch.build_direct_link`: `build_direct_link` (what POST /direct-links does) of tx-a -> rx-c on
  examples/switched.yaml (read the 3 nodes again, plan, one transaction writing a connectivity
  service on both switches and a PHYS link at both ends); median of 7 builds after a first one,
  each followed by a delete (not counted).
* `orch.pathcomp_1k`: key route computation on a generated 1 000-node / 5 000-link key graph
  (random pairs, random rates: a single feasible path or a split); median.

Run on its own: `python bench/orchestrator_bench.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from orchestrator.controller import Orchestrator  # noqa: E402
from orchestrator.inventory import from_network_json  # noqa: E402
from orchestrator.launcher import Network  # noqa: E402
from orchestrator.routing import NoRoute, generated_graph, key_route  # noqa: E402
from orchestrator.topology import parse_topology  # noqa: E402


def chain_topology() -> str:
    """n0 - n1 - ... - n6 (6 hops) plus a bypass n2 - x - n4."""
    nodes = [f"n{i}" for i in range(7)] + ["x"]
    fibres = [(f"n{i}", f"n{i + 1}") for i in range(6)] + [("n2", "x"), ("x", "n4")]
    lines = ["name: bench-chain", "nodes:"] + [f"  - {{name: {n}, domain: lab}}" for n in nodes]
    lines.append("fibres:")
    lines += [f"  - {{name: {a}-{b}, ends: [{a}, {b}], length_km: 10, band: C}}" for a, b in fibres]
    lines.append("modules:")
    for a, b in fibres:
        lines.append(f"  - {{name: {a}-{b}-tx, technology: dv-bb84, role: transmitter, node: {a}, pairs_with: {a}-{b}-rx}}")
        lines.append(f"  - {{name: {a}-{b}-rx, technology: dv-bb84, role: receiver, node: {b}, pairs_with: {a}-{b}-tx}}")
    return "\n".join(lines) + "\n"


def pathcomp_1k(requests: int = 200) -> float:
    g = generated_graph(1000, 5000, seed=7)
    rnd = random.Random(11)
    times = []
    for _ in range(requests):
        a, b = rnd.sample(list(g.nodes), 2)
        rate = rnd.choice([1_000, 20_000, 90_000, 150_000])
        t0 = time.perf_counter()
        try:
            key_route(g, a, b, rate)
        except NoRoute:
            pass
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def network_figures(state: Path, routes: int = 7, reroutes: int = 7) -> tuple[float, float]:
    net = Network(parse_topology(chain_topology(), "bench-chain.yaml"), state)
    net.orchestrate = False
    net.prepare()
    await net.start(timeout=90)
    orch = Orchestrator(from_network_json(net.network_data(), "lab"), poll_interval=0, notifications=False)
    try:
        await orch.start()
        deadline = time.monotonic() + 60
        while not all(orch.model.link_up(v) for v in orch.model.phys_links().values()):  # modules starting
            if time.monotonic() > deadline:
                raise RuntimeError("the network's QKD links did not come up")
            await asyncio.sleep(0.5)
            await orch.refresh()
        path = [f"n{i}" for i in range(7)]
        warm = await orch.provision_route("n0", "n6", 1000, ["sae-1", "sae-2"], path=path)  # first edits: not counted
        await orch.delete_route(warm.route_id)
        prov = []
        for _ in range(routes):
            t0 = time.perf_counter()
            r = await orch.provision_route("n0", "n6", 1000, ["sae-1", "sae-2"], path=[f"n{i}" for i in range(7)])
            prov.append((time.perf_counter() - t0) * 1000)
            await orch.delete_route(r.route_id)
        route = await orch.provision_route("n0", "n6", 1000, ["sae-1", "sae-2"], path=[f"n{i}" for i in range(7)])
        hop_links = orch.model.hop_links()
        ids = orch.ids
        direct = hop_links[frozenset((ids["n2"], ids["n3"]))]
        bypass = hop_links[frozenset((ids["n2"], ids["x"]))]
        rer = []
        for i in range(reroutes):
            down = direct if i % 2 == 0 else bypass
            orch.model.down_links.update(down)
            t0 = time.perf_counter()
            changed = await orch.heal()
            rer.append((time.perf_counter() - t0) * 1000)
            assert changed == [route.route_id], changed
            orch.model.down_links.difference_update(down)
        return statistics.median(prov), statistics.median(rer)
    finally:
        await orch.stop()
        await net.stop()


async def direct_link_figure(state: Path, builds: int = 7) -> float:
    import yaml

    raw = yaml.safe_load((ROOT / "examples" / "switched.yaml").read_text())
    raw.pop("direct_links", None)  # built here, timed
    net = Network(parse_topology(yaml.safe_dump(raw), "switched.yaml"), state)
    net.orchestrate = False
    net.prepare()
    await net.start(timeout=90)
    orch = Orchestrator(from_network_json(net.network_data(), "lab"), poll_interval=0, notifications=False)
    try:
        await orch.start()
        link, _ = await orch.build_direct_link("tx-a", "rx-c")  # first edits: not counted
        await orch.delete_direct_link(link.qkdl_id)
        times = []
        for _ in range(builds):
            t0 = time.perf_counter()
            link, created = await orch.build_direct_link("tx-a", "rx-c")
            times.append((time.perf_counter() - t0) * 1000)
            assert created
            await orch.delete_direct_link(link.qkdl_id)
        return statistics.median(times)
    finally:
        await orch.stop()
        await net.stop()


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("ncclient", "paramiko"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        prov, rer = asyncio.run(network_figures(Path(tmp)))
    print(f"orch.provision_6hop = {prov:.1f} ms (target <= 1000)")
    print(f"orch.reroute = {rer:.1f} ms (target <= 500)")
    with tempfile.TemporaryDirectory(prefix="orch-bench-") as tmp:
        direct = asyncio.run(direct_link_figure(Path(tmp)))
    print(f"orch.build_direct_link = {direct:.1f} ms (target <= 1000)")
    print(f"orch.pathcomp_1k = {pathcomp_1k():.2f} ms (target <= 100)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
