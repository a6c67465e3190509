"""Helpers for the orchestrator system tests (no tests here): `qkdnet up` in a subprocess, REST and
ETSI 014 clients, NETCONF snapshots of the nodes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from lxml import etree

from orchestrator.nodeclient import QKD_NS, NetconfEndpoint, connect

ROOT = Path(__file__).resolve().parents[1]
FILTER = f'<qkd_node xmlns="{QKD_NS}"/>'


@dataclass
class UpNetwork:
    state: Path
    proc: subprocess.Popen[bytes]
    net: dict[str, Any]
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, domain: str) -> str:
        return str(self.net["orchestrators"][domain]["url"])

    def endpoint(self, node: str) -> NetconfEndpoint:
        return NetconfEndpoint.from_json(self.net["nodes"][node]["netconf"])

    def stop(self) -> None:
        for p in self.extra:
            stop_process(p)
        stop_process(self.proc, timeout=30)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def qkdnet_up(topology: Path, state: Path, timeout: float = 60) -> UpNetwork:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.netctl", "up", "--topology", str(topology), "--state-dir", str(state)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=False,
    )
    deadline = time.monotonic() + timeout
    path = state / "network.json"
    while not path.exists():
        if proc.poll() is not None:
            logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted((state / "logs").glob("orch*.log")))
            raise AssertionError(f"qkdnet up exited with {proc.returncode}\n{logs}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise AssertionError("network.json not written in time")
        time.sleep(0.1)
    return UpNetwork(state, proc, json.loads(path.read_text()))


def start_orchestrator(state: Path, domain: str, record: Path | None = None, timeout: float = 30) -> tuple[subprocess.Popen[bytes], str]:
    """`qkdorch serve` on the network's inventory, port 0; returns the process and its URL."""
    args = [sys.executable, "-m", "orchestrator.cli", "serve", "--inventory", str(state / "inventory.json"),
            "--domain", domain, "--port", "0"]
    if record is not None:
        args += ["--record", str(record)]
    log = open(state / "logs" / f"test-orchestrator-{domain}.log", "ab")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    log.close()
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline().decode()
    assert line.startswith("READY "), f"orchestrator did not start: {line!r}"
    assert time.monotonic() < deadline
    return proc, line.split()[2]


def api(url: str, method: str = "GET", body: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


# -- NETCONF -------------------------------------------------------------------------------------------
def running(ep: NetconfEndpoint) -> str:
    """The node's running qkd_node, canonical XML (for before/after comparisons)."""
    with connect(ep) as m:
        data = m.get_config(source="running", filter=("subtree", FILTER)).data_ele
    return etree.tostring(data, method="c14n").decode()


def snapshot(up: UpNetwork) -> dict[str, str]:
    return {n: running(up.endpoint(n)) for n in sorted(up.net["nodes"])}


def node_data(ep: NetconfEndpoint) -> etree._Element:
    with connect(ep) as m:
        return m.get(filter=("subtree", FILTER)).data_ele


def q(path: str) -> str:
    return "/".join(f"{{{QKD_NS}}}{p}" for p in path.split("/"))


def virt_links(ep: NetconfEndpoint) -> dict[str, dict[str, Any]]:
    out = {}
    for ln in node_data(ep).iter(q("qkd_link")):
        if (ln.findtext(q("qkdl_type")) or "").endswith("VIRT"):
            out[ln.findtext(q("qkdl_id"))] = {
                "local": ln.findtext(q("qkdl_local/qkdn_id")), "remote": ln.findtext(q("qkdl_remote/qkdn_id")),
                "prev": ln.findtext(q("virt_prev_hop")), "next": [e.text for e in ln.findall(q("virt_next_hop"))],
                "bandwidth": ln.findtext(q("virt_bandwidth")),
            }
    return out


def apps(ep: NetconfEndpoint) -> dict[str, dict[str, Any]]:
    out = {}
    for a in node_data(ep).iter(q("qkd_app")):
        out[a.findtext(q("app_id"))] = {
            "backing": [e.text for e in a.findall(q("backing_qkdl_id"))],
            "min": a.findtext(q("app_qos/min_bandwidth")), "server": a.findtext(q("server_app_id")),
            "clients": [e.text for e in a.findall(q("client_app_id"))],
            "local": a.findtext(q("local_qkdn_id")), "remote": a.findtext(q("remote_qkdn_id")),
        }
    return out


# -- ETSI 014 ------------------------------------------------------------------------------------------
def _ctx(sae: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=sae["ca"])
    ctx.load_cert_chain(sae["cert"], sae["key"])
    return ctx


async def _call014(url: str, sae: dict[str, str], path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=_ctx(sae))) as s:
        async with s.post(f"{url}/api/v1/keys/{path}", json=body) as r:
            return r.status, json.loads(await r.text())


def enc_keys(net: dict[str, Any], node: str, sae: str, peer_sae: str, n: int = 2) -> tuple[int, Any]:
    return asyncio.run(_call014(net["nodes"][node]["etsi014"]["url"], net["saes"][sae], f"{peer_sae}/enc_keys",
                                {"number": n}))


def dec_keys(net: dict[str, Any], node: str, sae: str, peer_sae: str, ids: list[str]) -> tuple[int, Any]:
    return asyncio.run(_call014(net["nodes"][node]["etsi014"]["url"], net["saes"][sae], f"{peer_sae}/dec_keys",
                                {"key_IDs": [{"key_ID": k} for k in ids]}))


def forwarder_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("qkdnode.forwarder.service") is not None


def ring_topology(name: str = "ring4") -> dict[str, Any]:
    """a - b - c - d - a, one BB84 pair per fibre; SAEs on every node; route a->c declared via b."""
    nodes = ["a", "b", "c", "d"]
    fibres = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]
    topo: dict[str, Any] = {"name": name, "nodes": [{"name": n, "domain": "lab"} for n in nodes],
                            "fibres": [], "modules": []}
    for a, b in fibres:
        f = f"{a}-{b}"
        topo["fibres"].append({"name": f, "ends": [a, b], "length_km": 20, "band": "C"})
        topo["modules"] += [
            {"name": f"{f}-tx", "technology": "dv-bb84", "role": "transmitter", "node": a, "pairs_with": f"{f}-rx"},
            {"name": f"{f}-rx", "technology": "dv-bb84", "role": "receiver", "node": b, "pairs_with": f"{f}-tx"},
        ]
    topo["saes"] = [{"id": f"sae-{n}", "node": n} for n in nodes]
    topo["routes"] = [{"name": "a-c", "path": ["a", "b", "c"], "bandwidth_bps": 20000, "saes": ["sae-a", "sae-c"]}]
    return topo


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
