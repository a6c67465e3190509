"""Secrecy of the management plane (issue #9): no key bytes in anything but the key plane.

`qkdnet up` on examples/chain-4.yaml with every node recording each NETCONF message it receives or
sends (QKDNODE_NETCONF_RECORD); the launcher's orchestrator is replaced by one recording its own side
(`qkdorch serve --record`, WireRecorder). Then ETSI 014 traffic relayed a..d both ways, a route
provisioned and deleted through the orchestrator's REST API, every REST response, every RESTCONF
response of every node, and a full NETCONF <get> of every node. Captured: both NETCONF records, the
REST and RESTCONF bodies, and every file in the state dir except the key stores and private keys
(logs, datastores, network.json, ...). `reliability.secrecy` looks for every 16-byte window of every
key the SAEs received, raw, hex and base64: `reliability.leaks` must be 0.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import ssl
import sys
from pathlib import Path

import aiohttp
import pytest

from orchestrator.nodeclient import NetconfEndpoint, connect
from reliability.figures import Figure
from reliability.network import UpNetwork
from reliability.secrecy import KeyIndex, files_under
from test_orchestrator_helpers import api, start_orchestrator

ROOT = Path(__file__).resolve().parents[1]
SUITE_BUDGET_S = 90.0
ROUNDS = 6


async def restconf_bodies(net: dict, node: str) -> dict[str, bytes]:
    ctx = ssl.create_default_context(cafile=net["ca"])
    url = net["nodes"][node]["restconf"]["url"]
    out = {}
    auth = "Basic " + base64.b64encode(b"admin:admin").decode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx), headers={"Authorization": auth}) as s:
        for path in ("/data", "/data?content=nonconfig", "/data?content=config",
                     "/data/etsi-qkd-sdn-node:qkd_node?depth=3"):
            for accept in ("application/yang-data+json", "application/yang-data+xml"):
                async with s.get(url + path, headers={"Accept": accept}) as r:
                    assert r.status == 200, (node, path, r.status)
                    out[f"restconf {node} {path} {accept}"] = await r.read()
    return out


async def traffic(up: UpNetwork, rounds: int) -> list[bytes]:
    """014 relayed a..d both ways; returns every key both SAEs got (checked equal)."""
    keys: list[bytes] = []
    async with up.client("sae-a") as a, up.client("sae-d") as d:
        for i in range(rounds):
            for m, s, ms, ss in ((a, d, "sae-a", "sae-d"), (d, a, "sae-d", "sae-a")):
                got = await m.enc_keys(ss, 1 + i % 8)
                back = await s.dec_keys(ms, [k for k, _ in got])
                assert back == got
                keys += [v for _, v in got]
    return keys


@pytest.mark.timeout(240)
async def test_no_key_bytes_in_management_plane_or_logs(tmp_path: Path) -> None:
    server_record = tmp_path / "netconf-server-record.xml"
    orch_record = tmp_path / "orchestrator-record.xml"
    env = dict(os.environ, QKDNODE_NETCONF_RECORD=str(server_record))
    up = await UpNetwork.up(ROOT / "examples" / "chain-4.yaml", tmp_path / "net", env=env)
    captured: dict[str, bytes] = {}
    keys: list[bytes] = []
    orch = None
    try:
        net = up.net
        os.kill(net["orchestrators"]["lab"]["pid"], signal.SIGTERM)  # ours records its NETCONF side
        orch, url = await asyncio.to_thread(start_orchestrator, up.state, "lab", orch_record)

        async def rest(method: str, path: str, body: object = None) -> tuple[int, object]:
            st, data = await asyncio.to_thread(api, f"{url}{path}", method, body)
            captured[f"rest {method} {path} #{len(captured)}"] = json.dumps(data).encode()
            return st, data

        keys += await traffic(up, ROUNDS)
        for path in ("/health", "/topology", "/links", "/routes", "/direct-links", "/events"):
            st, _ = await rest("GET", path)
            assert st == 200, path
        st, route = await rest("POST", "/routes", {"src": "a", "dst": "c", "rate_bps": 1000, "saes": []})
        assert st == 201, route
        keys += await traffic(up, ROUNDS)
        for path in ("/routes", "/links", "/events", f"/routes/{route['id']}"):  # type: ignore[index]
            await rest("GET", path)
        st, _ = await rest("DELETE", f"/routes/{route['id']}")  # type: ignore[index]
        assert st in (200, 204)
        for node in net["nodes"]:
            captured.update(await restconf_bodies(net, node))
            ep = NetconfEndpoint.from_json(net["nodes"][node]["netconf"])

            def get_all(ep: NetconfEndpoint = ep) -> bytes:
                with connect(ep) as m:
                    return m.get().data_xml.encode()

            captured[f"netconf get {node}"] = await asyncio.to_thread(get_all)
        keys += await traffic(up, 2)
    finally:
        if orch is not None:
            orch.send_signal(signal.SIGTERM)
            await asyncio.to_thread(orch.wait, 20)
        await up.stop()
    server_text = server_record.read_bytes()
    orch_text = orch_record.read_bytes()
    assert b"edit-config" in server_text and b"<notification" in server_text, "the node record saw no provisioning"
    assert b"edit-config" in orch_text and b"get" in orch_text, "the orchestrator record saw no provisioning"
    captured["netconf server record"] = server_text
    captured["orchestrator record"] = orch_text
    state = files_under(up.state, skip=("keystore.sqlite3*", "*.key", "*_key", "ssh_host_*"))
    assert any(name.startswith("logs/") for name in state) and any(n.endswith("running.xml") for n in state), sorted(state)
    captured.update({f"state {k}": v for k, v in state.items()})
    assert len(keys) > 50 and len(set(keys)) == len(keys)
    index = KeyIndex(keys)
    leaks = [leak for where, blob in captured.items() for leak in index.scan(where, blob)]
    fig = Figure("reliability.leaks", len(leaks), "leaks", "==", 0)
    print(f"\n{fig.line()}  ({index.count} keys, {len(captured)} blobs, {sum(map(len, captured.values()))} bytes)",
          file=sys.stderr)
    assert not leaks, [str(x) for x in leaks[:10]]


def test_scanner_finds_every_form_of_a_planted_key() -> None:
    """The scanner is not blind: a key planted raw, as hex (both cases) or base64 (any alignment,
    either alphabet) in text, or only a 16-byte window of it, is found; other random keys are not."""
    import base64

    key, other = os.urandom(32), os.urandom(32)
    index = KeyIndex([key])
    forms = {
        "raw": b"<x>" + key + b"</x>",
        "raw-window": b"prefix \xff\xfe" + key[5:21] + b" suffix",
        "hex": b'{"k": "' + key.hex().encode() + b'"}',
        "HEX": b"k=" + key.hex().upper().encode(),
        "hex-window": b"k=" + key[3:19].hex().encode(),
        "b64": b"<key>" + base64.b64encode(key) + b"</key>",
        "b64-shifted": base64.b64encode(b"\x00" + key + b"\x01\x02"),
        "b64-shifted2": base64.b64encode(b"\x00\x00" + key),
        "b64url": base64.urlsafe_b64encode(b"\x07" + key),
    }
    for name, blob in forms.items():
        assert index.scan(name, blob), name
    clean = {"other-raw": other, "other-hex": other.hex().encode(), "other-b64": base64.b64encode(other),
             "text": b"<rpc-reply><ok/></rpc-reply>" * 100}
    assert not [leak for n, b in clean.items() for leak in index.scan(n, b)]
