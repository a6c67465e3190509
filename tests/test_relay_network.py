"""Key relay in whole networks: QKD modules feeding the key stores, routes installed over NETCONF.

* `qkdnet up` on examples/chain-4.yaml (node processes): ETSI 014 works end to end both ways at once,
  the QRNG service runs and network.json lists routes, forwarders and the QRNG.
* A ring a-b-c-d-a started in this process from the launcher's node configs (so that the test can
  read every node's own key store): two routes between a and c (via b for one SAE pair, via d for
  another), keys relayed both ways on both; link-key accounting checked on every hop's store; then b's
  VIRT entry is deleted over NETCONF and the route via b answers 503 with nothing consumed anywhere.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from orchestrator.launcher import Network
from orchestrator.nodeclient import QKD_NS, NetconfEndpoint, connect
from orchestrator.topology import parse_topology
from waiting import until

ROOT = Path(__file__).resolve().parents[1]


# -- 014 client --------------------------------------------------------------------------------------
def sae_ctx(sae: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=sae["ca"])
    ctx.load_cert_chain(sae["cert"], sae["key"])
    return ctx


async def call014(url: str, sae: dict[str, str], method: str, path: str, body: dict) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sae_ctx(sae))) as s:
        async with s.request(method, f"{url}/api/v1/keys/{path}", json=body) as r:
            return r.status, json.loads(await r.text())


async def relay_and_check(net: dict, src: str, src_sae: str, dst: str, dst_sae: str, n: int) -> list[str]:
    """enc_keys at src for dst_sae, dec_keys at dst: the same keys. Returns the key IDs."""
    saes = net["saes"]
    status, body = await call014(net["nodes"][src]["etsi014"]["url"], saes[src_sae], "POST",
                                 f"{dst_sae}/enc_keys", {"number": n})
    assert status == 200, body
    ids = [k["key_ID"] for k in body["keys"]]
    status, got = await call014(net["nodes"][dst]["etsi014"]["url"], saes[dst_sae], "POST",
                                f"{src_sae}/dec_keys", {"key_IDs": [{"key_ID": k} for k in ids]})
    assert status == 200, got
    assert got["keys"] == body["keys"]
    return ids


# -- qkdnet up ----------------------------------------------------------------------------------------
@pytest.mark.timeout(90)
async def test_qkdnet_up_chain4_relays_both_ways(tmp_path: Path) -> None:
    state = tmp_path / "net"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(ROOT / "examples" / "chain-4.yaml"),
         "--state-dir", str(state)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (state / "network.json").exists():
            assert proc.poll() is None, "qkdnet up exited"
            assert time.monotonic() < deadline, "network.json not written"
            await asyncio.sleep(0.1)
        net = json.loads((state / "network.json").read_text())
        assert net["routes"]["a-d"]["path"] == ["a", "b", "c", "d"]
        assert all(info["forwarder"]["port"] for info in net["nodes"].values())
        # the QRNG service (mutual TLS): raw bytes
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sae_ctx(net["saes"]["sae-a"]))) as s:
            async with s.get(net["qrng"]["url"] + "/entropy", params={"bytes": "33"}) as r:
                assert r.status == 200 and len(await r.read()) == 33
        # right after `qkdnet up`: both directions at once, several keys per request
        await asyncio.gather(relay_and_check(net, "a", "sae-a", "d", "sae-d", 8),
                             relay_and_check(net, "d", "sae-d", "a", "sae-a", 3))
        await relay_and_check(net, "a", "sae-a", "d", "sae-d", 1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    logs = "".join(p.read_text() for p in (state / "logs").glob("*.log"))
    assert "Traceback" not in logs


# -- in-process ring ------------------------------------------------------------------------------------
RING = """
name: ring-4
nodes: [{name: a}, {name: b}, {name: c}, {name: d}]
fibres:
  - {name: a-b, ends: [a, b], length_km: 10}
  - {name: b-c, ends: [b, c], length_km: 10}
  - {name: c-d, ends: [c, d], length_km: 10}
  - {name: d-a, ends: [d, a], length_km: 10}
modules:
  - {name: ab-t, technology: dv-cow, role: transmitter, node: a, pairs_with: ab-r}
  - {name: ab-r, technology: dv-cow, role: receiver, node: b, pairs_with: ab-t}
  - {name: bc-t, technology: dv-cow, role: transmitter, node: b, pairs_with: bc-r}
  - {name: bc-r, technology: dv-cow, role: receiver, node: c, pairs_with: bc-t}
  - {name: cd-t, technology: cv-gg02, role: transmitter, node: c, pairs_with: cd-r}
  - {name: cd-r, technology: cv-gg02, role: receiver, node: d, pairs_with: cd-t}
  - {name: da-t, technology: dv-cow, role: transmitter, node: d, pairs_with: da-r}
  - {name: da-r, technology: dv-cow, role: receiver, node: a, pairs_with: da-t}
saes:
  - {id: sae-a1, node: a}
  - {id: sae-a2, node: a}
  - {id: sae-c1, node: c}
  - {id: sae-c2, node: c}
routes:
  - {name: via-b, path: [a, b, c], saes: [sae-a1, sae-c1]}
  - {name: via-d, path: [a, d, c], saes: [sae-a2, sae-c2]}
"""


class Ring:
    def __init__(self, net: Network, nodes: dict[str, Any]) -> None:
        self.net = net
        self.nodes = nodes
        self.data = net.network_data()

    def link(self, x: str, y: str) -> str:
        """The PHYS link association between neighbours x and y."""
        y_id = self.nodes[y].node_id
        return next(q for q, lr in self.nodes[x].keyplane.links.items() if lr.link.remote_node == y_id)

    def delivered(self) -> dict[tuple[str, str], int]:
        out = {}
        for name, node in self.nodes.items():
            store = node.keyplane.store
            for a in store.associations():
                out[name, a.assoc_id] = store.stats(a.assoc_id).delivered
        return out

    def hop_deltas(self, before: dict, after: dict) -> dict[tuple[str, str], int]:
        return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


@pytest.fixture
async def ring(tmp_path: Path) -> AsyncIterator[Ring]:
    from qkdnode.config import parse_node_config
    from qkdnode.daemon import Node

    net = Network(parse_topology(RING, "ring-4.yaml"), tmp_path / "ring")
    net.prepare()
    nodes: dict[str, Any] = {}
    try:
        for name, np in net.nodes.items():
            raw = yaml.safe_load(np.config_path.read_text())
            raw.pop("fabric")  # statically paired modules: no optical plant process
            nodes[name] = Node(parse_node_config(raw, np.config_path))
        await asyncio.gather(*(n.start() for n in nodes.values()))
        await net.install_routes()  # over NETCONF, as `qkdnet up` does
        ring = Ring(net, nodes)
        deadline = time.monotonic() + 20
        while True:  # every link store holds keys in both halves
            try:
                if all(n.keyplane.store.stats(ring.link(x, y)).available_for_masters > 40
                       for x, n in nodes.items() for y in nodes if y != x and _adjacent(x, y)):
                    break
            except (StopIteration, KeyError):
                pass
            assert time.monotonic() < deadline, "QKD links did not fill"
            await asyncio.sleep(0.1)
        yield ring
    finally:
        for n in nodes.values():
            await asyncio.wait_for(n.stop(), 10)


def _adjacent(x: str, y: str) -> bool:
    order = "abcd"
    return (order.index(x) - order.index(y)) % 4 in (1, 3)


def _netconf_edit(ring: Ring, node: str, links_xml: str) -> None:
    info = ring.data["nodes"][node]["netconf"]
    config = (f'<config xmlns="urn:ietf:params:xml:ns:netconf:base:1.0" '
              f'xmlns:nc="urn:ietf:params:xml:ns:netconf:base:1.0"><qkd_node xmlns="{QKD_NS}">'
              f"<qkd_links>{links_xml}</qkd_links></qkd_node></config>")
    with connect(NetconfEndpoint.from_json(info)) as m, m.locked("candidate"):
        m.edit_config(target="candidate", config=config)
        m.commit()


@pytest.mark.timeout(90)
async def test_ring_relays_both_ways_exact_accounting_and_missing_route(ring: Ring) -> None:
    net = ring.data
    rid = {name: r["qkdl_id"] for name, r in net["routes"].items()}
    for name, path, (sa, sc) in (("via-b", "abc", ("sae-a1", "sae-c1")), ("via-d", "adc", ("sae-a2", "sae-c2"))):
        for src, dst, s_sae, d_sae, n in (("a", "c", sa, sc, 6), ("c", "a", sc, sa, 2)):
            before = ring.delivered()
            await relay_and_check(net, src, s_sae, dst, d_sae, n)
            deltas = ring.hop_deltas(before, ring.delivered())
            expected = {(x, ring.link(x, y)): n + 1 for x, y in zip(path, path[1:])}
            expected |= {(y, ring.link(x, y)): n + 1 for x, y in zip(path, path[1:])}
            expected[src, rid[name]] = n  # enc_keys at the origin, dec_keys at the target
            expected[dst, rid[name]] = n
            assert deltas == expected, (name, src)
    # the route the 015 datastores describe is the one the keys took: SAE pairs are bound to routes
    status, body = await call014(net["nodes"]["a"]["etsi014"]["url"], net["saes"]["sae-a1"], "POST",
                                 "sae-c2/enc_keys", {"number": 1})
    assert status == 401, body

    # delete b's VIRT entry over NETCONF: the route via b fails at b, nothing is consumed anywhere
    await asyncio.to_thread(_netconf_edit, ring, "b",
                            f'<qkd_link nc:operation="delete"><qkdl_id>{rid["via-b"]}</qkdl_id></qkd_link>')
    before = ring.delivered()
    status, body = await call014(net["nodes"]["a"]["etsi014"]["url"], net["saes"]["sae-a1"], "POST",
                                 "sae-c1/enc_keys", {"number": 4})
    assert status == 503, body
    assert body["details"][0]["reason"] == "no-route" and "node b" in body["message"]
    assert ring.delivered() == before
    # nothing in progress anywhere, and what was prepared ahead on the route via b is released
    await until(lambda: not any(p.route_id == rid["via-b"] for node in ring.nodes.values() for p in
                                [*node.keyplane.forwarder.pending.values(), *node.keyplane.forwarder.ready.relays()]),
                what="the relays prepared ahead on the removed route to be released")
    for name, node in ring.nodes.items():
        assert node.keyplane.forwarder.idle(), name
    await relay_and_check(net, "c", "sae-c2", "a", "sae-a2", 2)  # the other route is unaffected
