"""Faults (issue #9), bounded, on one `qkdnet up` ring a-b-c-d-a with its orchestrator (module fixture):

* the orchestrator process is SIGKILLed and started again on the same inventory: it rebuilds its
  view from the nodes' datastores (same routes, same qkdl_id) and no node's running config changes;
* a fibre of the relay route a..c is cut while SAE clients pull keys both ways (and over a direct
  link): the orchestrator reroutes under the same qkdl_id, the clients carry on over the new path,
  and the clients' ledger shows no key lost, none delivered twice, both ends identical;
* the route's end node c is SIGKILLed and restarted from its config: it rejoins with its running
  datastore (VIRT route included) as it was, and ETSI 014 across the route works again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
import yaml

from reliability.crash import CrashDriver
from reliability.ledger import Flow
from reliability.network import UpNetwork
from test_orchestrator_helpers import api, ring_topology, running, start_orchestrator, virt_links, wait_for

pytestmark = pytest.mark.timeout(180)
SUITE_BUDGET_S = 150.0

FLOWS = (
    Flow("relay a->c", "sae-a", "sae-c", "a", "c", True, ("a", "b", "c", "d")),
    Flow("relay c->a", "sae-c", "sae-a", "c", "a", True, ("c", "b", "a", "d")),
    Flow("direct d->a", "sae-d", "sae-a", "d", "a", False, ("d",)),
)


@dataclass
class Ring:
    up: UpNetwork
    url: str
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def net(self) -> dict[str, Any]:
        return self.up.net

    def endpoint(self, node: str) -> Any:
        from orchestrator.nodeclient import NetconfEndpoint

        return NetconfEndpoint.from_json(self.net["nodes"][node]["netconf"])

    def snapshot(self) -> dict[str, str]:
        return {n: running(self.endpoint(n)) for n in sorted(self.net["nodes"])}

    def route_id(self) -> str:
        return str(self.net["routes"]["a-c"]["qkdl_id"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ring(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Ring]:
    tmp = tmp_path_factory.mktemp("faults")
    topo = tmp / "ring4.yaml"
    topo.write_text(yaml.safe_dump(ring_topology(), sort_keys=False))
    up = await UpNetwork.up(topo, tmp / "net")
    r = Ring(up, up.net["orchestrators"]["lab"]["url"])
    try:
        yield r
    finally:
        for p in r.extra:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                await asyncio.to_thread(p.wait, 20)
        await up.stop()


def _route(ring: Ring) -> dict[str, Any]:
    st, r = api(f"{ring.url}/routes/{ring.route_id()}")
    assert st == 200, r
    return dict(r)


@pytest.mark.asyncio(loop_scope="module")
async def test_orchestrator_killed_and_restarted_changes_nothing(ring: Ring) -> None:
    await asyncio.to_thread(wait_for, lambda: _route(ring)["status"] == "up", 30, "route a-c up")
    before = await asyncio.to_thread(ring.snapshot)
    st, routes_before = await asyncio.to_thread(api, f"{ring.url}/routes")
    assert st == 200 and routes_before["routes"]
    os.kill(ring.net["orchestrators"]["lab"]["pid"], signal.SIGKILL)
    proc, url = await asyncio.to_thread(start_orchestrator, ring.up.state, "lab")
    ring.extra.append(proc)
    ring.url = url
    st, health = await asyncio.to_thread(api, f"{url}/health")
    assert st == 200 and health["ready"] and health["reachable"] == 4, health
    st, routes_after = await asyncio.to_thread(api, f"{url}/routes")
    assert st == 200
    assert routes_after == routes_before
    assert _route(ring)["paths"][0]["qkdl_id"] == ring.route_id()
    await asyncio.sleep(3)  # a few polling rounds of the new orchestrator
    assert await asyncio.to_thread(ring.snapshot) == before


@pytest.mark.asyncio(loop_scope="module")
async def test_link_cut_under_load_reroutes_and_loses_nothing(ring: Ring) -> None:
    rid = ring.route_id()
    path = _route(ring)["paths"][0]["nodes"]
    via = path[1]
    fibre = f"a-{via}" if via == "b" else f"{via}-a"
    driver = CrashDriver(ring.up, seed=5, flows=FLOWS)
    healed: dict[str, Any] = {}

    async def cut_and_heal() -> None:
        await asyncio.sleep(1.0)
        cut = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator.netctl", "fibre", "cut",
                                                       fibre, "--state-dir", str(ring.up.state)],
                                      capture_output=True, text=True)
        assert cut.returncode == 0, cut.stderr

        def moved() -> dict[str, Any] | None:
            r = _route(ring)
            return r if via not in r["paths"][0]["nodes"] and r["status"] == "up" else None

        healed.update(await asyncio.to_thread(wait_for, moved, 40, f"route a-c to avoid {via}"))
        after_heal = {f: driver.successes[f] for f in ("relay a->c", "relay c->a")}
        await asyncio.to_thread(wait_for, lambda: all(driver.successes[f] > after_heal[f] for f in after_heal),
                                40, "relayed keys over the new path")

    try:
        report = await driver.under_load(cut_and_heal)
    finally:
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "orchestrator.netctl", "fibre", "restore",
                                                 fibre, "--state-dir", str(ring.up.state)], capture_output=True)
    assert healed["paths"][0]["qkdl_id"] == rid
    assert rid in virt_links(ring.endpoint(healed["paths"][0]["nodes"][1]))
    s = report.ledger.summary()
    assert s["received"] > 20 and all(driver.successes[f.name] for f in FLOWS)
    assert (s["lost"], s["reused"], s["mismatched"], s["cut"]) == (0, 0, 0, 0), (s, report.outcomes)


@pytest.mark.asyncio(loop_scope="module")
async def test_node_restarted_rejoins_with_its_routes(ring: Ring) -> None:
    rid = ring.route_id()
    ep = ring.endpoint("c")
    before = await asyncio.to_thread(running, ep)
    assert rid in await asyncio.to_thread(virt_links, ep)
    await ring.up.kill("c")
    await ring.up.restart("c")
    assert await asyncio.to_thread(running, ep) == before  # durable running datastore, VIRT route included
    assert rid in await asyncio.to_thread(virt_links, ep)

    async def relayed() -> bool:
        try:
            async with ring.up.client("sae-a") as a, ring.up.client("sae-c") as c:
                got = await a.enc_keys("sae-c", 2)
                return await c.dec_keys("sae-a", [k for k, _ in got]) == got
        except Exception:
            return False

    for _ in range(150):
        if await relayed():
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("ETSI 014 across the route did not work again after c restarted")
    await asyncio.to_thread(wait_for, lambda: _route(ring)["status"] == "up", 30, "route a-c up again")
    assert await asyncio.to_thread(running, ep) == before
